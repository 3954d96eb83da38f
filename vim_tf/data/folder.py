"""A folder of image files as a dataset (`folder:<path>`).

Files: image files are found recursively by extension (.jpg .jpeg .png .bmp .gif .webp .tif .tiff,
case-insensitive). Hidden folders (name starting with ".", e.g. .git) are not entered. Hidden
files (.DS_Store, macOS "._photo.jpg" resource forks, which carry an image extension but are no
image) and files without an image extension are ignored, counted (`num_ignored`) and named in the
log.

Labels: if the top level of a split folder holds only subfolders (no image files), each subfolder is
a class: sorted subfolder names (the union over all split folders, so train and test agree) get
labels 0..n-1 and `num_classes` is n. Otherwise every image gets label 0 and `num_classes` is None
(unconditional data).

Splits:
    * `<path>/train` plus `<path>/test`, `<path>/val` or `<path>/validation`: those folders are the
      splits (class subfolders inside them). The names test/val/validation are aliases of one
      another when only one of them exists.
    * Otherwise a deterministic holdout over the sorted list of relative file paths: file index
      i % 10 == 0 is `test` (alias `val`/`validation`), the rest is `train`.

Decoding (PIL inside `tf.numpy_function`, to uint8 RGB [H, W, 3]):
    * EXIF orientation is applied; multi-frame files (GIF, TIFF) give their first frame.
    * Grayscale, palette, CMYK, YCbCr: PIL's conversion to RGB.
    * Alpha (RGBA, LA, palette or RGB with transparency): composited on black, rgb * alpha / 255,
      so colours hidden under fully transparent pixels never leak into the data.
    * 16-bit integer images (modes I;16*, I): value / 257 (65535 -> 255); float images (mode F)
      are taken to be in [0, 1].
    * A corrupt, truncated or unreadable file is skipped, never fatal: it is logged once (path and
      reason) and counted in `FolderSource.num_skipped` / `FolderSource.skipped`. So is an image
      PIL refuses as a decompression bomb (over 2 x `Image.MAX_IMAGE_PIXELS`, ~179M pixels).
    * `make_dataset` checks that each split it reads has at least one decodable file: a split of
      only unreadable (or no) image files raises ValueError naming a file and its error, instead
      of a training pipeline that ends at once or an evaluation over nothing.
"""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
HOLDOUT_EVERY = 10
_EVAL_SPLIT_NAMES = ("test", "val", "validation")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_INT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def is_image_file(name: str) -> bool:
    """Whether a file name has one of the accepted image extensions (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Converts a loaded PIL image of any mode to uint8 RGB [H, W, 3]."""
    if img.mode in _INT16_MODES:
        values = np.asarray(img).astype(np.float64)
        gray = np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "F":
        values = np.nan_to_num(np.asarray(img, np.float64))
        gray = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"), np.float64)
        rgb = rgba[:, :, :3] * (rgba[:, :, 3:] / 255.0)
        return np.rint(rgb).astype(np.uint8)
    return np.asarray(img.convert("RGB"), np.uint8)


def decode_image_bytes(data: bytes) -> np.ndarray:
    """Decodes an encoded image (any PIL format) to uint8 RGB [H, W, 3]; raises on bad data."""
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        # PIL's own message names an anonymous BytesIO; the caller logs the real path.
        raise ValueError(f"not a recognised image ({len(data)} bytes, empty or corrupt)") from None
    with img:
        # `load()` decodes everything now, so truncated files raise here instead of yielding a
        # partly grey image (PIL's LOAD_TRUNCATED_IMAGES is process-global and left alone).
        img.load()
        try:
            oriented = ImageOps.exif_transpose(img)
        except Exception:  # A broken EXIF block is no reason to lose the pixels.
            oriented = img
        rgb = _to_rgb(oriented)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"decoded to unusable shape {rgb.shape}")
    return np.ascontiguousarray(rgb)


def _list_tree(root: str) -> tuple[list[str], list[str]]:
    """Returns sorted relative paths of (image files, other files) under `root`, recursively."""
    images, others = [], []
    for dirpath, dirnames, filenames in tf.io.gfile.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            rel = name if rel_dir == "." else os.path.join(rel_dir, name)
            usable = is_image_file(name) and not name.startswith(".")
            (images if usable else others).append(rel)
    return sorted(images), sorted(others)


def _normalize(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if "://" in path:  # gs://, s3://, ...: abspath would glue the working directory in front.
        return path.rstrip("/")
    return os.path.abspath(os.path.expanduser(path))


def _top(relative_path: str) -> str:
    """First component of a relative path: the class folder."""
    return relative_path.replace(os.sep, "/").split("/", 1)[0]


def _subfolders(path: str) -> list[str]:
    return sorted(
        d.rstrip("/")
        for d in tf.io.gfile.listdir(path)
        if not d.startswith(".") and tf.io.gfile.isdir(os.path.join(path, d.rstrip("/")))
    )


def _split_listings(path: str) -> tuple[dict[str, tuple[str, list[str]]], list[str]]:
    """Returns ({split: (split root, sorted relative image paths)}, non-image file paths)."""
    top = _subfolders(path)
    eval_dirs = [name for name in _EVAL_SPLIT_NAMES if name in top]
    listings, ignored = {}, []
    if "train" in top and eval_dirs:
        for split in ["train", *eval_dirs]:
            root = os.path.join(path, split)
            images, others = _list_tree(root)
            listings[split] = (root, images)
            ignored += [os.path.join(root, f) for f in others]
    else:
        images, others = _list_tree(path)
        ignored = [os.path.join(path, f) for f in others]
        listings["train"] = (path, [f for i, f in enumerate(images) if i % HOLDOUT_EVERY])
        listings["test"] = (path, images[::HOLDOUT_EVERY])
    return listings, ignored


class FolderSource:
    """Scans a folder once and serves its splits as decoded examples (see module docstring).

    Args:
        path: the folder (local or any file system `tf.io.gfile` reads).

    Attributes:
        path: absolute folder path.
        class_names: sorted class folder names, or None when the data are unlabeled.
        num_classes: len(class_names) or None.
        split_names: the split folder names, or ("train", "test") for the holdout.
        ignored_files: non-image files found (absolute paths).
        skipped: {path: reason} of files that failed to decode so far.

    Raises:
        FileNotFoundError: the path does not exist or is not a folder.
        ValueError: the folder holds no image files.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = _normalize(path)
        if not tf.io.gfile.isdir(self.path):
            raise FileNotFoundError(
                f"folder dataset path {os.fspath(path)!r} does not exist or is not a directory"
            )
        self.skipped: dict[str, str] = {}
        self._lock = threading.Lock()

        listings, ignored = _split_listings(self.path)
        self.split_names = tuple(listings)
        self.ignored_files = ignored

        # Class folders only if no split root holds loose images (only folders of them).
        all_images = [f for _, images in listings.values() for f in images]
        labeled = bool(all_images) and all("/" in f.replace(os.sep, "/") for f in all_images)
        if labeled:
            self.class_names = sorted({_top(f) for f in all_images})
        else:
            self.class_names = None
        self.num_classes = len(self.class_names) if self.class_names else None
        index = {name: i for i, name in enumerate(self.class_names or [])}

        self._files = {}
        for split, (root, images) in listings.items():
            labels = [index[_top(f)] if labeled else 0 for f in images]
            self._files[split] = ([os.path.join(root, f) for f in images], labels)
        total = sum(len(p) for p, _ in self._files.values())
        if total == 0:
            raise ValueError(
                f"folder dataset {self.path!r} holds no image files (looked recursively for "
                f"{', '.join(IMAGE_EXTENSIONS)}; found {len(ignored)} other files)"
            )
        logging.info(
            "folder:%s: %d image files, splits %s, %s",
            self.path,
            total,
            {s: len(p) for s, (p, _) in self._files.items()},
            f"{self.num_classes} classes" if labeled else "unlabeled (label 0)",
        )
        if ignored:
            logging.warning(
                "folder:%s: ignored %d hidden files or files without an image extension (e.g. %s)",
                self.path,
                len(ignored),
                ", ".join(ignored[:3]),
            )

    @property
    def num_skipped(self) -> int:
        """Number of distinct files that failed to decode so far."""
        return len(self.skipped)

    @property
    def num_ignored(self) -> int:
        """Number of non-image files found by the scan."""
        return len(self.ignored_files)

    def resolve_split(self, split: str) -> str:
        """Maps a requested split name to a split of this folder (test/val/validation alias)."""
        if split in self._files:
            return split
        if split in _EVAL_SPLIT_NAMES:
            for name in _EVAL_SPLIT_NAMES:
                if name in self._files:
                    return name
        raise ValueError(
            f"split {split!r} is not in folder dataset {self.path!r}; valid splits: "
            f"{sorted(self._files)} (test, val and validation are aliases)"
        )

    def files(self, split: str) -> tuple[list[str], list[int]]:
        """Returns (absolute file paths, labels) of a split, in sorted path order."""
        paths, labels = self._files[self.resolve_split(split)]
        return list(paths), list(labels)

    def num_examples(self, split: str) -> int:
        """Number of image files in a split (files that later fail to decode are included)."""
        return len(self._files[self.resolve_split(split)][0])

    def _decode_or_skip(self, path: bytes) -> tuple[np.ndarray, bool]:
        name = path.decode("utf-8", "surrogateescape")
        try:
            with tf.io.gfile.GFile(name, "rb") as f:
                data = f.read()
            return decode_image_bytes(data), True
        except Exception as e:  # Any failure means this one file is unusable, not the run.
            reason = f"{type(e).__name__}: {e}"
            with self._lock:
                first = name not in self.skipped
                self.skipped[name] = reason
                count = len(self.skipped)
            if first:
                logging.warning(
                    "folder:%s: skipping %s (%s); %d unreadable files so far",
                    self.path,
                    name,
                    reason,
                    count,
                )
            return np.zeros((0, 0, 3), np.uint8), False

    def _require_decodable(self, split: str, paths: list[str]) -> None:
        """Raises ValueError unless one of `paths` decodes (tried in order, stops at a good one)."""
        for path in paths:
            if path not in self.skipped:
                _, ok = self._decode_or_skip(path.encode("utf-8", "surrogateescape"))
                if ok:
                    return
        where = f"split {split!r} of folder dataset {self.path!r}"
        if not paths:
            raise ValueError(
                f"{where} holds no image files (splits: {self.split_sizes()}): add images or "
                "use another split"
            )
        reason = self.skipped[paths[0]]
        raise ValueError(
            f"none of the {len(paths)} image files of {where} can be decoded (e.g. {paths[0]}: "
            f"{reason}); {self.num_ignored} other files were ignored. Nothing to read: check "
            "that the files are images"
        )

    def split_sizes(self) -> dict[str, int]:
        """{split: number of image files} (files that later fail to decode are included)."""
        return {split: len(paths) for split, (paths, _) in self._files.items()}

    def as_dataset(
        self,
        split: str,
        *,
        num_shards: int = 1,
        shard_index: int = 0,
        shuffle_files: bool = False,
        seed: int | None = None,
        require_examples: bool = False,
    ) -> tf.data.Dataset:
        """Decoded examples of one split; unreadable files are filtered out.

        Args:
            split: split name (see `resolve_split`).
            num_shards: number of input pipelines sharing the files.
            shard_index: which of them this is; files are sharded before decoding.
            shuffle_files: shuffle the file list each iteration (a full shuffle: the sorted list is
                grouped by class, which a bounded example shuffle buffer would not undo).
            seed: seed of the file shuffle.
            require_examples: check now that at least one file of this shard decodes (files are
                tried in order up to the first good one), so a split of only unreadable files
                fails here with a clear ValueError instead of yielding nothing (a training
                pipeline would end, an evaluation would average over no images).

        Returns:
            Dataset of {"image": uint8 [H, W, 3], "label": int32 []}.
        """
        paths, labels = self.files(split)
        if require_examples:
            self._require_decodable(split, paths[shard_index::num_shards])
        ds = tf.data.Dataset.from_tensor_slices(
            (tf.constant(paths, tf.string), tf.constant(labels, tf.int32))
        )
        if num_shards > 1:
            ds = ds.shard(num_shards, shard_index)
        if shuffle_files:
            ds = ds.shuffle(max(1, len(paths)), seed=seed, reshuffle_each_iteration=True)

        def decode(path, label):
            image, ok = tf.numpy_function(
                self._decode_or_skip, [path], [tf.uint8, tf.bool], stateful=False
            )
            image.set_shape([None, None, 3])
            ok.set_shape([])
            return {"image": image, "label": label}, ok

        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.filter(lambda example, ok: ok)
        return ds.map(lambda example, ok: example)


_SOURCES: dict[str, FolderSource] = {}
_SOURCES_LOCK = threading.Lock()


def get_source(path: str | os.PathLike, *, refresh: bool = False) -> FolderSource:
    """Returns the `FolderSource` of `path`, scanning the folder once per process.

    Sharing one source keeps one scan for train, eval and `dataset_info`, and one set of skip
    counters. `refresh=True` rescans (e.g. after files were added).
    """
    key = _normalize(path)
    with _SOURCES_LOCK:
        if refresh or key not in _SOURCES:
            _SOURCES[key] = FolderSource(key)
        return _SOURCES[key]


def skipped_files() -> dict[str, str]:
    """{path: reason} of every file skipped so far by any folder source of this process."""
    with _SOURCES_LOCK:
        sources = list(_SOURCES.values())
    out = {}
    for source in sources:
        out.update(source.skipped)
    return out
