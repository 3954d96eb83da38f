"""scikit-learn's bundled handwritten digits served as a TFDS dataset (`sklearn_digits`).

The data are the 1,797 real 8x8 grayscale digits of `sklearn.datasets.load_digits()` (UCI optical
recognition of handwritten digits, values 0..16, labels 0-9). They ship inside the scikit-learn
wheel, so preparing this dataset never touches the network.

Pixel mapping (per example, sklearn value v in 0..16):
    1. g = v * 255 / 16 as float32 (0..255; white digit on a black background, as in the data).
    2. Upsample the 8x8 float image to R x R with PIL bicubic resampling (no-op when R == 8).
    3. Clip to [0, 255], round to nearest, cast to uint8, replicate to 3 channels.

Split (fixed, documented, independent of any seed): example i in sklearn's order goes to `test` if
i % 5 == 0, else to `train`, which gives 360 test and 1,437 train examples. Both splits keep
sklearn's order on disk (shuffling is disabled), so `test` example k is sklearn example 5k.

Resolution R is chosen with a `DigitsConfig`: the predefined configs are `16px`, `32px` (default)
and `64px`; any other positive R is accepted by passing `config=DigitsConfig(resolution=R)`.

Example:
    builder = load_digits_builder(resolution=32, data_dir="/tmp/tfds")
    ds = builder.as_dataset(split="test")  # {"image": uint8 [32, 32, 3], "label": int64 []}
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

try:  # fcntl is POSIX only; without it concurrent prepares rely on the re-check below.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

NUM_CLASSES = 10
SOURCE_RESOLUTION = 8
SOURCE_MAX_VALUE = 16
TEST_EVERY = 5


def _check_resolution(resolution) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    if resolution <= 0:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")


class DigitsConfig(tfds.core.BuilderConfig):
    """BuilderConfig selecting the output resolution R of `SklearnDigits`.

    Args:
        resolution: output side R in pixels (images are [R, R, 3]); any positive int.
        name: config name; defaults to f"{resolution}px".
        **kwargs: passed to `tfds.core.BuilderConfig` (e.g. `description`).
    """

    def __init__(self, *, resolution: int = 32, name: str | None = None, **kwargs):
        _check_resolution(resolution)
        kwargs.setdefault(
            "description", f"8x8 sklearn digits upsampled (bicubic) to {resolution}x{resolution}."
        )
        super().__init__(name=name or f"{int(resolution)}px", **kwargs)
        self.resolution = int(resolution)


def split_of(index: int) -> str:
    """Returns the split ("train" or "test") of sklearn example `index`."""
    return "test" if index % TEST_EVERY == 0 else "train"


def digit_to_rgb(values: np.ndarray, resolution: int) -> np.ndarray:
    """Maps one sklearn digit to the dataset's image.

    Args:
        values: [8, 8] or [64] array of sklearn values in 0..16.
        resolution: output side R.

    Returns:
        [R, R, 3] uint8 RGB image (the three channels are equal).
    """
    gray = np.asarray(values, np.float32).reshape(SOURCE_RESOLUTION, SOURCE_RESOLUTION)
    gray = gray * (255.0 / SOURCE_MAX_VALUE)
    if resolution != SOURCE_RESOLUTION:
        # Mode "F" keeps full float precision through the resampling; rounding happens once, below.
        gray = np.asarray(
            Image.fromarray(gray).resize((resolution, resolution), Image.Resampling.BICUBIC),
            np.float32,
        )
    gray = np.rint(np.clip(gray, 0.0, 255.0)).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 1,797 handwritten 8x8 digits as R x R RGB (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: sklearn load_digits(), bicubic upsampling to R x R RGB, "
        "test = every 5th example (index % 5 == 0).",
    }
    BUILDER_CONFIGS = [DigitsConfig(resolution=r) for r in (16, 32, 64)]
    DEFAULT_CONFIG_NAME = "32px"
    # TFDS 4.9.10 derives this through `importlib_resources`, which it does not install; the
    # builder has no checksums file next to it, so the plain module path is all TFDS needs.
    code_path = epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        r = self.builder_config.resolution
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(r, r, 3), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=[str(i) for i in range(NUM_CLASSES)]),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/modules/generated/"
            "sklearn.datasets.load_digits.html",
            # sklearn's order is kept on disk so example k of a split is reproducible by index.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The data ship inside scikit-learn; nothing to download.
        return {
            "train": self._generate_examples("train"),
            "test": self._generate_examples("test"),
        }

    def _generate_examples(self, split: str):
        from sklearn.datasets import load_digits

        digits = load_digits()
        r = self.builder_config.resolution
        for i, (values, label) in enumerate(zip(digits.data, digits.target)):
            if split_of(i) == split:
                yield i, {"image": digit_to_rgb(values, r), "label": int(label)}


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    # `is_prepared()` alone logs a warning for a version folder that does not exist yet.
    return builder.data_path.exists() and builder.is_prepared()


def _config_for(resolution: int) -> DigitsConfig | str:
    for config in SklearnDigits.BUILDER_CONFIGS:
        if config.resolution == resolution:
            return config.name
    return DigitsConfig(resolution=resolution)


@contextlib.contextmanager
def _prepare_lock(builder: tfds.core.DatasetBuilder):
    """Serializes prepares of one config across processes sharing a local data_dir.

    Yields:
        Whether a lock is held (False on file systems without `flock`, e.g. gs://).
    """
    root = os.fspath(builder.data_dir_root)
    if fcntl is None or "://" in root:
        yield False
        return
    os.makedirs(root, exist_ok=True)
    # Outside the dataset folder so TFDS never sees the lock file as a config or version.
    path = os.path.join(root, f".{builder.name}-{builder.builder_config.name}.lock")
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_leftover_incomplete_dirs(builder: tfds.core.DatasetBuilder) -> None:
    """Deletes temp dirs left by a prepare that was killed (only called under the lock)."""
    config_dir = builder.data_path.parent
    if not config_dir.exists():
        return
    for child in config_dir.iterdir():
        if child.name.startswith("incomplete.") and child.is_dir():
            logging.warning("Removing %s left by an interrupted prepare.", child)
            child.rmtree(missing_ok=True)


def load_digits_builder(
    resolution: int = 32, data_dir: str | os.PathLike | None = None
) -> SklearnDigits:
    """Returns the `sklearn_digits` builder at `resolution`, preparing it first if needed.

    Offline by construction: the data come from the scikit-learn wheel and GCS look-ups are off.
    Safe when several processes call it at once (a file lock serializes the prepare; the losers
    reuse the winner's files) and after a prepare that was killed midway (its temp dir is removed).

    Args:
        resolution: output side R (any positive int; 16, 32, 64 are predefined configs).
        data_dir: TFDS data dir; None uses TFDS's default (`TFDS_DATA_DIR` or
            ~/tensorflow_datasets).

    Returns:
        A prepared `SklearnDigits` builder.
    """
    _check_resolution(resolution)
    config = _config_for(int(resolution))
    data_dir = os.fspath(data_dir) if data_dir is not None else None
    return prepare_offline(lambda: SklearnDigits(config=config, data_dir=data_dir))


def prepare_offline(make_builder):
    """Returns `make_builder()` prepared, without any download (shared by the embedded datasets).

    Safe when several processes call it at once (a file lock serializes the prepare; the losers
    reuse the winner's files) and after a prepare that was killed midway (its temp dir is removed).

    Args:
        make_builder: a function of no arguments returning a new TFDS builder of one config in
            one data_dir (called again after waiting for the lock, so the builder re-reads the
            disk).

    Returns:
        The prepared builder.
    """
    builder = make_builder()
    if _is_prepared(builder):
        return builder
    download_config = tfds.download.DownloadConfig(
        try_download_gcs=False,
        download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS,
    )
    with _prepare_lock(builder) as locked:
        # Another process may have finished while this one waited; a fresh builder re-reads disk.
        builder = make_builder()
        if _is_prepared(builder):
            return builder
        if locked:  # Without the lock a temp dir may belong to a live prepare elsewhere.
            _remove_leftover_incomplete_dirs(builder)
        try:
            builder.download_and_prepare(download_config=download_config)
        except OSError:
            # Without a working lock (e.g. a shared network file system) two processes can race to
            # rename their temp dirs; the loser's rename fails but the data are there.
            builder = make_builder()
            if not _is_prepared(builder):
                raise
            logging.info("%s was prepared by another process.", builder.data_path)
    return builder
