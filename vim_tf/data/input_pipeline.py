"""The input pipeline: a dataset name in, batches of {"image": [b, s, s, 3] in [0, 1], "label"} out.

Dataset names (the `DATASET` gin macro):
    * `'digits'`: scikit-learn's bundled digits (`vim_tf.data.digits`), built directly at
      `image_size` so no second resize blurs them; prepared on first use, offline.
    * `'photos'`: crops of seven colour photographs from the scikit-image and scikit-learn
      wheels (`vim_tf.data.photos`), split by photograph, built at `image_size` 32 or 64;
      prepared on first use, offline.
    * `'tfds:<name>[/<config>][:<version>]'`: any TFDS image dataset with an `image` feature
      (and optionally a `label` ClassLabel) already prepared in `data_dir`. Nothing is ever
      downloaded: an unprepared dataset raises `DatasetNotPreparedError` saying how to prepare it.
    * `'folder:<path>'`: a folder of image files (`vim_tf.data.folder`).

Preprocessing (as in the ViT-VQGAN / VIM papers): the shorter side is resized to `image_size`
(bilinear with antialiasing, rounded back to uint8), then training takes a random (or center)
`image_size` square crop and an optional horizontal flip; evaluation takes the center crop.
Images without a label get label 0 (`dataset_info(...)["num_classes"]` is then None); grayscale
is replicated to RGB and alpha composited on black.
"""

from __future__ import annotations

import os

import gin
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from vim_tf.data import digits as digits_lib
from vim_tf.data import folder as folder_lib
from vim_tf.data import photos as photos_lib

VALID_FORMS = "'digits', 'photos', 'tfds:<name>[/<config>][:<version>]' or 'folder:<path>'"


class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS dataset is not prepared in the data_dir (vim_tf never downloads at run time)."""


def check_dataset_name(dataset: str) -> tuple[str, str | None]:
    """Validates a dataset name without touching any file.

    Args:
        dataset: `'digits'`, `'photos'`, `'tfds:<name>[/<config>][:<version>]'` or
            `'folder:<path>'`.

    Returns:
        (kind, argument): ("digits", None), ("photos", None),
        ("tfds", "<name>[/<config>][:<version>]") or ("folder", "<path>").

    Raises:
        ValueError: `dataset` has none of the four forms.
    """
    if isinstance(dataset, str):
        if dataset in ("digits", "photos"):
            return dataset, None
        kind, sep, arg = dataset.partition(":")
        if sep and kind == "folder" and arg.strip():
            return "folder", arg
        if sep and kind == "tfds" and arg.strip():
            try:
                name, _ = tfds.core.naming.parse_builder_name_kwargs(arg)
            except ValueError as e:
                raise ValueError(
                    f"dataset {dataset!r}: {arg!r} is not a TFDS name of the form "
                    "<name>[/<config>][:<version>]"
                ) from e
            if name.namespace:
                # Community and Hugging Face namespaces resolve over the network.
                raise ValueError(
                    f"dataset {dataset!r}: TFDS namespaces ({name.namespace!r}) need the network "
                    "and are not supported; valid forms: " + VALID_FORMS
                )
            return "tfds", arg
    raise ValueError(f"dataset must be {VALID_FORMS}, got {dataset!r}")


def _not_prepared_error(spec: str, builder: tfds.core.DatasetBuilder) -> DatasetNotPreparedError:
    data_dir = os.fspath(builder.data_dir_root)
    command = f"tfds build {spec} --data_dir={data_dir}"
    python = f"tfds.builder({spec!r}, data_dir={data_dir!r}).download_and_prepare()"
    lines = [
        (
            f"TFDS dataset {spec!r} is not prepared in data_dir {data_dir!r} (no prepared "
            f"{os.fspath(builder.data_path)}). vim_tf never downloads data while it runs; "
            "prepare it once beforehand."
        )
    ]
    instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    if instructions:
        manual_dir = os.path.join(data_dir, "downloads", "manual")
        command += f" --manual_dir={manual_dir}"
        python = python.replace(
            "download_and_prepare()",
            "download_and_prepare(download_config=tfds.download.DownloadConfig("
            f"manual_dir={manual_dir!r}))",
        )
        lines.append(
            "This dataset cannot be downloaded automatically: first put the files it needs in "
            f"the manual dir {manual_dir}. TFDS says:\n  {instructions.strip()}"
        )
    lines.append(f"Command: {command}")
    lines.append(f"Or in Python: {python}")
    return DatasetNotPreparedError("\n".join(lines))


def _tfds_builder(spec: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """A prepared TFDS builder for `spec`; never downloads."""
    try:
        builder = tfds.builder(spec, data_dir=data_dir, try_gcs=False)
    except tfds.core.registered.DatasetNotFoundError as e:
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"dataset 'tfds:{spec}': unknown TFDS dataset ({first_line})") from e
    if not (builder.data_path.exists() and builder.is_prepared()):
        raise _not_prepared_error(spec, builder)
    if "image" not in builder.info.features:
        raise ValueError(
            f"dataset 'tfds:{spec}' has no 'image' feature; its features are "
            f"{sorted(builder.info.features.keys())}"
        )
    return builder


def _source_builder(dataset: str, image_size: int | None, data_dir):
    """Returns ("tfds", builder) or ("folder", FolderSource) for a checked dataset name."""
    kind, arg = check_dataset_name(dataset)
    data_dir = os.fspath(data_dir) if data_dir is not None else None
    if kind == "digits":
        resolution = image_size if image_size is not None else 32
        return "tfds", digits_lib.load_digits_builder(resolution, data_dir=data_dir)
    if kind == "photos":
        resolution = image_size if image_size is not None else photos_lib.RESOLUTIONS[0]
        return "tfds", photos_lib.load_photos_builder(resolution, data_dir=data_dir)
    if kind == "tfds":
        return "tfds", _tfds_builder(arg, data_dir)
    return "folder", folder_lib.get_source(arg)


def _has_int_label(builder: tfds.core.DatasetBuilder) -> bool:
    """Whether the builder has a scalar integer `label` feature (anything else is ignored)."""
    features = builder.info.features
    if "label" not in features:
        return False
    label = features["label"]
    if label.shape == () and label.tf_dtype.is_integer:
        return True
    logging.warning(
        "%s: feature 'label' is not a scalar int (%s); examples get label 0", builder.name, label
    )
    return False


def _label_num_classes(builder: tfds.core.DatasetBuilder) -> int | None:
    if "label" not in builder.info.features:
        return None
    label = builder.info.features["label"]
    return label.num_classes if isinstance(label, tfds.features.ClassLabel) else None


def dataset_info(dataset: str, data_dir: str | os.PathLike | None = None) -> dict:
    """Class count and split sizes of a dataset.

    Args:
        dataset: a dataset name (see `check_dataset_name`).
        data_dir: TFDS data dir (ignored for folders).

    Returns:
        {"num_classes": int or None, "num_examples": {split: int}}. For folders, num_examples
        counts image files, including any that later fail to decode.
    """
    kind, arg = check_dataset_name(dataset)
    if kind == "digits":
        # The split rule fixes the counts; no need to prepare a resolution just to count.
        from sklearn.datasets import load_digits

        n = len(load_digits().target)
        num_test = len(range(0, n, digits_lib.TEST_EVERY))
        return {
            "num_classes": digits_lib.NUM_CLASSES,
            "num_examples": {"train": n - num_test, "test": num_test},
        }
    if kind == "photos":
        # The crop grid gives the same counts at every resolution; read from the image sizes.
        return {
            "num_classes": len(photos_lib.PHOTOGRAPHS),
            "num_examples": photos_lib.num_examples(),
        }
    if kind == "folder":
        source = folder_lib.get_source(arg)
        return {
            "num_classes": source.num_classes,
            "num_examples": {s: source.num_examples(s) for s in source.split_names},
        }
    builder = _tfds_builder(arg, os.fspath(data_dir) if data_dir is not None else None)
    return {
        "num_classes": _label_num_classes(builder),
        "num_examples": {name: int(s.num_examples) for name, s in builder.info.splits.items()},
    }


def num_examples(dataset: str, split: str, data_dir: str | os.PathLike | None = None) -> int:
    """The number of examples of one split of a dataset (see `dataset_info`).

    Raises:
        ValueError: the dataset has no such split (the valid ones are named).
    """
    kind, arg = check_dataset_name(dataset)
    if kind == "folder":
        return folder_lib.get_source(arg).num_examples(split)
    counts = dataset_info(dataset, data_dir)["num_examples"]
    if split not in counts:
        raise ValueError(f"dataset {dataset!r} has no split {split!r}: valid are {sorted(counts)}")
    return counts[split]


def _to_rgb_example(example: dict, has_label: bool) -> dict:
    """Normalizes a decoded example to {"image": uint8 [H, W, 3], "label": int32 []}.

    Args:
        example: {"image": uint8 [H, W, C] with C in (1, 3, 4), optional "label": int []}.
        has_label: whether to read "label" (else the label is 0).
    """
    image = example["image"]
    if image.dtype != tf.uint8:
        raise ValueError(f"image feature must be uint8, got {image.dtype.name}")
    channels = image.shape[-1]
    if channels == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif channels == 4:
        rgb = tf.cast(image[..., :3], tf.float32) * (tf.cast(image[..., 3:], tf.float32) / 255.0)
        image = tf.cast(tf.round(rgb), tf.uint8)
    elif channels != 3:
        raise ValueError(f"image feature must have 1, 3 or 4 channels, got shape {image.shape}")
    label = tf.cast(example["label"], tf.int32) if has_label else tf.constant(0, tf.int32)
    return {"image": image, "label": label}


def resize_shorter_side(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resizes so the shorter side is `size`, keeping the aspect ratio.

    Args:
        image: [H, W, 3] uint8.
        size: target shorter side.

    Returns:
        [H', W', 3] uint8 with min(H', W') == size (the input itself when already so).
    """
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    scale = tf.cast(size, tf.float64) / tf.cast(tf.minimum(h, w), tf.float64)
    new_h = tf.maximum(size, tf.cast(tf.round(tf.cast(h, tf.float64) * scale), tf.int32))
    new_w = tf.maximum(size, tf.cast(tf.round(tf.cast(w, tf.float64) * scale), tf.int32))

    def resize():
        out = tf.image.resize(image, [new_h, new_w], method="bilinear", antialias=True)
        return tf.cast(tf.round(tf.clip_by_value(out, 0.0, 255.0)), tf.uint8)

    return tf.cond(tf.equal(tf.minimum(h, w), size), lambda: image, resize)


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """[H, W, C] -> the central [size, size, C] (H, W >= size)."""
    shape = tf.shape(image)
    top = (shape[0] - size) // 2
    left = (shape[1] - size) // 2
    return image[top : top + size, left : left + size]


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _combine_seed(seed: int, pipeline_id: int) -> int:
    # Pipelines get distinct but reproducible streams from one user seed.
    return int(np.random.SeedSequence([seed, pipeline_id]).generate_state(1)[0] >> 1)


@gin.configurable
def make_dataset(
    dataset: str = gin.REQUIRED,
    split: str = "train",
    image_size: int = gin.REQUIRED,
    batch_size: int = gin.REQUIRED,
    training: bool = True,
    *,
    data_dir: str | os.PathLike | None = None,
    random_flip: bool = False,
    random_crop: bool = True,
    shuffle_buffer: int = 10_000,
    cache: bool = False,
    seed: int | None = None,
    deterministic: bool = False,
    drop_remainder: bool | None = None,
    num_epochs: int | None = None,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Batches of images in [0, 1] and int labels from a named dataset.

    Args:
        dataset: `'digits'`, `'photos'`, `'tfds:<name>[/<config>][:<version>]'` or
            `'folder:<path>'`.
        split: split name; TFDS slicing (e.g. "train[:10%]") works for digits, photos and tfds.
        image_size: output side s.
        batch_size: GLOBAL batch size; with `input_context` each pipeline yields the per-replica
            batch `input_context.get_per_replica_batch_size(batch_size)`.
        training: shuffle, repeat and augment (random crop / flip); False makes one ordered pass
            with center crops.
        data_dir: TFDS data dir for digits, photos and tfds datasets (None: TFDS's default).
        random_flip: random horizontal flips in training.
        random_crop: random crops in training (center crops otherwise).
        shuffle_buffer: example shuffle buffer in training.
        cache: keep decoded, resized images (before random augmentation) in memory.
        seed: seeds shuffling and augmentation; combined with the input pipeline id.
        deterministic: same seed and True give the same training batches in the same order
            (requires a seed). Evaluation is always ordered.
        drop_remainder: drop the last partial batch (default `training`: static batch shapes
            in training, every example in evaluation).
        num_epochs: training passes over the data (None: forever). Evaluation always makes one.
        input_context: a `tf.distribute.InputContext`; examples (files for folders) are sharded
            by its input pipeline before any batching.

    Returns:
        Dataset of {"image": float32 [b, s, s, 3] in [0, 1], "label": int32 [b]}.
    """
    _check_dataset_args(
        split, image_size, batch_size, shuffle_buffer, num_epochs, training, seed, deterministic
    )
    drop_remainder = training if drop_remainder is None else drop_remainder
    num_pipelines, pipeline_id, per_replica_batch = 1, 0, batch_size
    if input_context is not None:
        num_pipelines = input_context.num_input_pipelines
        pipeline_id = input_context.input_pipeline_id
        per_replica_batch = input_context.get_per_replica_batch_size(batch_size)
    if seed is not None and num_pipelines > 1:
        seed = _combine_seed(seed, pipeline_id)

    ds = _read_examples(
        dataset, split, image_size, data_dir, training, seed, num_pipelines, pipeline_id
    )

    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        ds = ds.repeat(num_epochs)
        ds = _augment(ds, image_size, seed, random_crop, random_flip)
    else:
        ds = ds.map(
            lambda ex: {"image": center_crop(ex["image"], image_size), "label": ex["label"]},
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    return _finish(ds, image_size, per_replica_batch, drop_remainder, deterministic or not training)


def _check_dataset_args(
    split, image_size, batch_size, shuffle_buffer, num_epochs, training, seed, deterministic
):
    _check_positive_int("image_size", image_size)
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("shuffle_buffer", shuffle_buffer)
    if num_epochs is not None:
        _check_positive_int("num_epochs", num_epochs)
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty str, got {split!r}")
    if deterministic and training and seed is None:
        raise ValueError("deterministic=True needs a seed in training, got seed=None")


def _finish(ds, image_size, batch_size, drop_remainder, deterministic):
    """uint8 images -> float32 in [0, 1] of static shape, batched and prefetched.

    `deterministic`: keep the order (an eval pass keeps the stored order so per-example outputs
    line up run to run).
    """

    def to_float(example):
        image = tf.cast(example["image"], tf.float32) / 255.0
        image = tf.ensure_shape(image, [image_size, image_size, 3])
        return {"image": image, "label": example["label"]}

    ds = ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    options = tf.data.Options()
    options.deterministic = deterministic
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _read_examples(dataset, split, image_size, data_dir, training, seed, num_pipelines, index):
    """This input pipeline's shard of the split: {"image": uint8 RGB with shorter side
    `image_size`, "label": int32} examples."""
    kind, source = _source_builder(dataset, image_size, data_dir)
    if kind == "tfds":
        read_split = split
        if num_pipelines > 1:
            read_split = tfds.even_splits(split, n=num_pipelines)[index]
        read_config = tfds.ReadConfig(
            shuffle_seed=seed, try_autocache=False, skip_prefetch=True, add_tfds_id=False
        )
        # Ordered datasets (digits, photos) refuse file shuffling; the example shuffle covers them.
        shuffle_files = training and not source.info.disable_shuffling
        ds = source.as_dataset(
            split=read_split, shuffle_files=shuffle_files, read_config=read_config
        )
        has_label = _has_int_label(source)
    else:
        has_label = True
        ds = source.as_dataset(
            split,
            num_shards=num_pipelines,
            shard_index=index,
            shuffle_files=training,
            seed=seed,
            # A split of only unreadable files fails now, naming a file and its error.
            require_examples=True,
        )

    def prepare(example):
        example = _to_rgb_example(example, has_label)
        return {
            "image": resize_shorter_side(example["image"], image_size),
            "label": example["label"],
        }

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return ds


def _augment(ds, image_size, seed, random_crop, random_flip):
    """Random crops (center crops when off) and flips of training examples."""
    # One stateless seed pair per example keeps augmentation reproducible under parallel map.
    ds = tf.data.Dataset.zip(ds, tf.data.Dataset.random(seed=seed).batch(2))

    def augment(example, pair):
        image = example["image"]
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(pair, 2))
        if random_crop:
            image = tf.image.stateless_random_crop(image, [image_size, image_size, 3], crop_seed)
        else:
            image = center_crop(image, image_size)
        if random_flip:
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        return {"image": image, "label": example["label"]}

    return ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
