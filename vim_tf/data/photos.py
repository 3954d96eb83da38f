"""Crops of the colour photographs that ship inside installed wheels, as a TFDS dataset.

The `'photos'` dataset (TFDS builder `embedded_photos`) is a small natural-image counterpart of
the embedded digits: every image is an R x R crop (R = 32 or 64) of one of seven colour
photographs of everyday scenes that scikit-image and scikit-learn install as package data. The
files are read from the installed package folders (`skimage/data/`, `sklearn/datasets/images/`);
nothing is fetched, and a missing file raises `FileNotFoundError` naming it.

Photographs and split (by photograph: no test crop comes from a photograph seen in training):

    label  name             source                                  size (w x h)  split
    0      astronaut        scikit-image data/astronaut.png         512 x 512     train
    1      motorcycle_left  scikit-image data/motorcycle_left.png   741 x 500     train
    2      rocket           scikit-image data/rocket.jpg            640 x 427     train
    3      flower           scikit-learn datasets/images/flower.jpg 640 x 427     train
    4      chelsea          scikit-image data/chelsea.png           451 x 300     test
    5      coffee           scikit-image data/coffee.png            600 x 400     test
    6      china            scikit-learn datasets/images/china.jpg  640 x 427     test

Train holds a portrait with flat studio colour, a cluttered indoor scene with metal, a night
scene with lights and a flower close-up with blurred foliage; test holds animal fur, a
still life with wood grain and a landscape with architecture, trees and sky, so neither side is
one kind of picture. Left out: `motorcycle_right` (the other half of the `motorcycle_left`
stereo pair, nearly the same picture, so it may sit in neither split without a leak or a
duplicate); grayscale photographs (camera, coins, moon, brick, grass, gravel, page, text,
clock_motion, cell): the dataset is about colour; microscopy, astronomy and medical photographs
(ihc, hubble_deep_field, retina: mostly one colour or black, not everyday scenes); synthetic
pictures (color, horse, logo, phantom, chessboards).

Crops (deterministic, no randomness at all): each photograph is resized with PIL Lanczos
resampling to two scales, factor R/128 and R/64 of its side (1/4 and 1/2 at R = 32, 1/2 and 1 at
R = 64; sizes rounded down), and cut on a grid of R x R windows with stride R/4 in both
directions, the grid centred in the scaled photograph. Scaling with R makes the 64 px dataset
the same fields of view as the 32 px one at twice the detail, with the same number of crops;
the downscales give a 32 px crop about an eighth or a quarter of the photograph's width, so most
crops hold edges or texture rather than one flat colour. Every crop is kept (no filter on
content). Crop counts per split, for R = 32 and R = 64 alike:

    train: astronaut 1,010 + motorcycle_left 1,444 + rocket 1,021 + flower 1,021 = 4,496
    test:  chelsea 441 + coffee 883 + china 1,021 = 2,345

Features: `image` uint8 [R, R, 3] RGB; `label` int64, the index of the source photograph in
`PHOTOGRAPHS` (the table above). The label names a photograph, not a class: train and test
labels are disjoint sets, so it suits per-photograph statistics, not a classifier or a linear
probe across splits. On disk the examples keep the order photograph, scale, row, column.

Example:
    builder = load_photos_builder(resolution=32, data_dir="/tmp/tfds")
    ds = builder.as_dataset(split="test")  # {"image": uint8 [32, 32, 3], "label": int64 []}
"""

from __future__ import annotations

import importlib.util
import io
import os
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from vim_tf.data import digits as digits_lib


class Photograph(NamedTuple):
    """One source photograph, shipped by an installed package.

    Attributes:
        name: short name (also the label name).
        package: import name of the package holding the file ("skimage" or "sklearn").
        path: the file, relative to the package folder, with "/" separators.
        split: "train" or "test".
    """

    name: str
    package: str
    path: str
    split: str


PHOTOGRAPHS = (
    Photograph("astronaut", "skimage", "data/astronaut.png", "train"),
    Photograph("motorcycle_left", "skimage", "data/motorcycle_left.png", "train"),
    Photograph("rocket", "skimage", "data/rocket.jpg", "train"),
    Photograph("flower", "sklearn", "datasets/images/flower.jpg", "train"),
    Photograph("chelsea", "skimage", "data/chelsea.png", "test"),
    Photograph("coffee", "skimage", "data/coffee.png", "test"),
    Photograph("china", "sklearn", "datasets/images/china.jpg", "test"),
)
SPLITS = ("train", "test")
RESOLUTIONS = (32, 64)
# Scale factors per unit of R: a photograph's side is multiplied by R * factor.
SCALES_PER_PIXEL = (1 / 128, 1 / 64)
_DISTRIBUTIONS = {"skimage": "scikit-image", "sklearn": "scikit-learn"}


def check_resolution(resolution) -> int:
    """Returns `resolution` as an int if it is one of `RESOLUTIONS`; raises ValueError otherwise."""
    valid = isinstance(resolution, (int, np.integer)) and not isinstance(resolution, bool)
    if not valid or int(resolution) not in RESOLUTIONS:
        raise ValueError(
            f"the photos dataset has image_size (resolution) {' or '.join(map(str, RESOLUTIONS))}"
            f" (configs {', '.join(f'{r}px' for r in RESOLUTIONS)}), got {resolution!r}"
        )
    return int(resolution)


def photographs(split: str) -> tuple[Photograph, ...]:
    """The photographs of `split` ("train" or "test"), in label order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return tuple(p for p in PHOTOGRAPHS if p.split == split)


def photograph_path(photo: Photograph) -> str:
    """The file of `photo` inside its installed package; never downloads.

    Raises:
        FileNotFoundError: the package is not installed or does not hold the file.
    """
    distribution = _DISTRIBUTIONS[photo.package]
    spec = importlib.util.find_spec(photo.package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"photos dataset: photograph {photo.name!r} ships inside {distribution}, which is "
            f"not installed (pip install {distribution}, a dependency of vim_tf)"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], *photo.path.split("/"))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"photos dataset: photograph {photo.name!r} is missing: no file {path} in the "
            f"installed {distribution} (the dataset reads the files its wheel installs and never "
            "fetches them; reinstall that package)"
        )
    return path


def load_photograph(photo: Photograph) -> np.ndarray:
    """Decodes `photo` to uint8 [H, W, 3] RGB."""
    with Image.open(photograph_path(photo)) as image:
        return np.asarray(image.convert("RGB"), np.uint8)


def scaled_sizes(width: int, height: int, resolution: int) -> list[tuple[int, int]]:
    """(width, height) of each scale a photograph of `width` x `height` is cut at."""
    return [(int(width * resolution * s), int(height * resolution * s)) for s in SCALES_PER_PIXEL]


def grid_starts(length: int, resolution: int) -> list[int]:
    """Start offsets of the R-wide windows, stride R/4, centred in `length` pixels."""
    stride = resolution // 4
    if length < resolution:
        return []
    count = (length - resolution) // stride + 1
    margin = (length - resolution - (count - 1) * stride) // 2
    return [margin + i * stride for i in range(count)]


def photo_crops(image: np.ndarray, resolution: int):
    """Yields (scale index, top, left, crop uint8 [R, R, 3]) of one photograph, in stored order.

    Args:
        image: uint8 [H, W, 3] RGB photograph.
        resolution: R, one of `RESOLUTIONS`.
    """
    height, width = image.shape[:2]
    for level, size in enumerate(scaled_sizes(width, height, resolution)):
        scaled = image
        if size != (width, height):
            resized = Image.fromarray(image).resize(size, Image.Resampling.LANCZOS)
            scaled = np.asarray(resized, np.uint8)
        for top in grid_starts(size[1], resolution):
            for left in grid_starts(size[0], resolution):
                yield level, top, left, scaled[top : top + resolution, left : left + resolution]


def num_examples(resolution: int = 32) -> dict[str, int]:
    """{split: crop count} from the photographs' sizes alone (no pixels decoded, nothing built)."""
    resolution = check_resolution(resolution)
    counts = dict.fromkeys(SPLITS, 0)
    for photo in PHOTOGRAPHS:
        with Image.open(photograph_path(photo)) as image:
            width, height = image.size
        for w, h in scaled_sizes(width, height, resolution):
            counts[photo.split] += len(grid_starts(w, resolution)) * len(grid_starts(h, resolution))
    return counts


class PhotosConfig(tfds.core.BuilderConfig):
    """BuilderConfig selecting the crop side R (32 or 64) of `EmbeddedPhotos`."""

    def __init__(self, *, resolution: int = 32, **kwargs):
        resolution = check_resolution(resolution)
        kwargs.setdefault(
            "description", f"{resolution}x{resolution} grid crops of seven embedded photographs."
        )
        super().__init__(name=f"{resolution}px", **kwargs)
        self.resolution = resolution


class EmbeddedPhotos(tfds.core.GeneratorBasedBuilder):
    """Crops of seven colour photographs from installed wheels (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: 4 train and 3 test photographs, two scales, stride R/4 grid.",
    }
    BUILDER_CONFIGS = [PhotosConfig(resolution=r) for r in RESOLUTIONS]
    DEFAULT_CONFIG_NAME = "32px"
    # As for the digits builder: TFDS only needs the module path (no checksums file).
    code_path = epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        r = self.builder_config.resolution
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(r, r, 3), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=[p.name for p in PHOTOGRAPHS]),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-image.org/docs/stable/api/skimage.data.html",
            # Stored order (photograph, scale, row, column) is part of the dataset's definition.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The photographs ship inside installed packages; nothing to download.
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
        r = self.builder_config.resolution
        for photo in photographs(split):
            label = PHOTOGRAPHS.index(photo)
            for level, top, left, crop in photo_crops(load_photograph(photo), r):
                key = f"{photo.name}-s{level}-y{top:04d}-x{left:04d}"
                yield key, {"image": encode_png(crop), "label": label}


def encode_png(crop: np.ndarray) -> bytes:
    """uint8 [R, R, 3] -> PNG bytes (lossless).

    TFDS would encode an array itself through one TensorFlow call per example, several times
    slower than PIL for thousands of tiny images; it stores bytes as given.
    """
    if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
        raise ValueError(f"crop must be uint8 [R, R, 3], got {crop.dtype} {crop.shape}")
    buffer = io.BytesIO()
    Image.fromarray(crop).save(buffer, format="PNG")
    return buffer.getvalue()


def load_photos_builder(
    resolution: int = 32, data_dir: str | os.PathLike | None = None
) -> EmbeddedPhotos:
    """Returns the `embedded_photos` builder at `resolution`, preparing it first if needed.

    Offline and safe under concurrent callers, as `digits.load_digits_builder`.

    Args:
        resolution: crop side R, 32 or 64.
        data_dir: TFDS data dir; None uses TFDS's default.

    Returns:
        A prepared `EmbeddedPhotos` builder.

    Raises:
        ValueError: `resolution` is not 32 or 64.
        FileNotFoundError: a photograph is missing from its installed package.
    """
    name = f"{check_resolution(resolution)}px"
    data_dir = os.fspath(data_dir) if data_dir is not None else None
    return digits_lib.prepare_offline(lambda: EmbeddedPhotos(config=name, data_dir=data_dir))
