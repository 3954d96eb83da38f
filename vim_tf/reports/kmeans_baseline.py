"""A k-means patch codebook: the rate-matched baseline a learned image tokenizer must beat.

Every image is cut into non-overlapping P x P RGB patches; k-means with K centres is fit on the
train split's patches (each a P*P*3 vector of pixels in [0, 1]), and every test image is
reconstructed by replacing each patch with its nearest centre. That is a quantizer with the same
token grid and codebook size as a tokenizer of patch size P and K codes, so both spend the same
bits per image, (S / P)^2 * log2(K) at image side S, and their PSNR, SSIM and codebook usage can be
set side by side (the scores are those of `vim_tf.eval.quantizer_eval`, computed by the same
functions).

The fit is scikit-learn's `KMeans` (Lloyd iterations from a k-means++ start) on at most
`max_train_patches` train patches drawn at random without replacement: full batch Lloyd reaches
a lower distortion than mini-batch k-means, and a baseline should be as strong as the method
allows; the subsample bounds its cost.

Example:
    metrics = run_kmeans_baseline("photos", 32, 4, 512, "/tmp/kmeans/photos.json")
    # metrics["psnr"], metrics["ssim"], metrics["codebook_usage"], metrics["bits_per_image"]
"""

from __future__ import annotations

import math
import os

import numpy as np
import tensorflow as tf
from absl import logging

from vim_tf.data import input_pipeline
from vim_tf.models.quantizer import code_statistics
from vim_tf.utils import images as image_utils
from vim_tf.utils import model_dir as model_dir_lib

GRID_EXAMPLES = 16
SSIM_MIN_SIZE = 11  # tf.image.ssim's 11 x 11 Gaussian window


def bits_per_image(image_size: int, patch_size: int, codebook_size: int) -> float:
    """Bits one image costs as codes: (image_size / patch_size)^2 * log2(codebook_size)."""
    return (image_size // patch_size) ** 2 * math.log2(codebook_size)


def to_patches(images: np.ndarray, patch_size: int) -> np.ndarray:
    """Non-overlapping patches, row by row.

    Args:
        images: [N, H, W, C] float; H and W divisible by `patch_size`.
        patch_size: P.

    Returns:
        [N * (H / P) * (W / P), P * P * C] float32, each patch's pixels in (y, x, c) order.
    """
    n, h, w, c = images.shape
    if h % patch_size or w % patch_size:
        raise ValueError(
            f"patch_size {patch_size} must divide the image size, got images of {h}x{w}"
        )
    p = patch_size
    patches = np.asarray(images, np.float32).reshape(n, h // p, p, w // p, p, c)
    return patches.transpose(0, 1, 3, 2, 4, 5).reshape(-1, p * p * c)


def from_patches(patches: np.ndarray, image_shape: tuple[int, ...], patch_size: int) -> np.ndarray:
    """Inverse of `to_patches`: [N * h * w, P * P * C] -> [N, H, W, C] with H, W, C = image_shape."""
    h, w, c = image_shape
    p = patch_size
    grid = np.asarray(patches).reshape(-1, h // p, w // p, p, p, c)
    return grid.transpose(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def fit_codebook(train_images, patch_size, codebook_size, seed=0, max_train_patches=100_000):
    """Fits k-means to the train patches.

    Args:
        train_images: [N, H, W, 3] float in [0, 1].
        patch_size: P.
        codebook_size: K, the number of centres.
        seed: seeds the patch subsample and the k-means++ start.
        max_train_patches: fit on at most this many patches (drawn without replacement).

    Returns:
        (centres [K, P * P * 3] float32, number of patches fit on).
    """
    from sklearn.cluster import KMeans

    patches = to_patches(train_images, patch_size)
    if codebook_size > len(patches):
        raise ValueError(
            f"codebook_size {codebook_size} exceeds the {len(patches)} train patches; use a "
            "smaller codebook or more train images"
        )
    if len(patches) > max_train_patches:
        rng = np.random.default_rng(seed)
        patches = patches[np.sort(rng.choice(len(patches), max_train_patches, replace=False))]
    kmeans = KMeans(n_clusters=codebook_size, init="k-means++", n_init=1, random_state=seed)
    kmeans.fit(patches)
    return kmeans.cluster_centers_.astype(np.float32), len(patches)


def nearest_codes(patches: np.ndarray, centres: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Index of the nearest centre (squared Euclidean) of each patch: [M, D], [K, D] -> [M]."""
    centre_norms = np.sum(np.square(centres, dtype=np.float64), axis=1)
    codes = np.empty(len(patches), np.int64)
    for start in range(0, len(patches), chunk):
        x = patches[start : start + chunk].astype(np.float64)
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 is the same for every centre.
        codes[start : start + chunk] = np.argmin(centre_norms - 2.0 * x @ centres.T, axis=1)
    return codes


def reconstruct(images: np.ndarray, centres: np.ndarray, patch_size: int):
    """Replaces every patch by its nearest centre.

    Args:
        images: [N, H, W, 3] float in [0, 1].
        centres: [K, P * P * 3].
        patch_size: P.

    Returns:
        (reconstructions [N, H, W, 3] float32, codes [N, H / P, W / P] int64).
    """
    n, h, w, _ = images.shape
    codes = nearest_codes(to_patches(images, patch_size), centres)
    recs = from_patches(centres[codes], images.shape[1:], patch_size)
    return recs.astype(np.float32), codes.reshape(n, h // patch_size, w // patch_size)


def score(images: np.ndarray, recs: np.ndarray, codes: np.ndarray, codebook_size: int) -> dict:
    """PSNR and SSIM (means over images, as the quantizer evaluator reports them), codebook usage
    and perplexity of the codes over the whole set."""
    sums = {"psnr": 0.0, "ssim": 0.0}
    for start in range(0, len(images), 256):
        x = tf.constant(images[start : start + 256])
        y = tf.constant(recs[start : start + 256])
        sums["psnr"] += float(tf.reduce_sum(tf.cast(image_utils.psnr(x, y), tf.float64)))
        sums["ssim"] += float(tf.reduce_sum(tf.cast(image_utils.ssim(x, y), tf.float64)))
    counts = np.bincount(codes.reshape(-1), minlength=codebook_size).astype(np.float32)
    usage, perplexity = code_statistics(counts)
    return {
        "psnr": sums["psnr"] / len(images),
        "ssim": sums["ssim"] / len(images),
        "codebook_usage": float(usage),
        "perplexity": float(perplexity),
    }


def load_split(dataset, split, image_size, data_dir=None, batch_size=256) -> np.ndarray:
    """Every image of `split` once, in stored order, as the quantizer evaluator reads it.

    Returns:
        [N, image_size, image_size, 3] float32 in [0, 1].
    """
    ds = input_pipeline.make_dataset(
        dataset, split, image_size, batch_size, training=False, data_dir=data_dir
    )
    images = [batch["image"].numpy() for batch in ds]
    if not images:
        raise ValueError(f"dataset {dataset!r} split {split!r} is empty")
    return np.concatenate(images)


def run_kmeans_baseline(
    dataset,
    image_size,
    patch_size,
    codebook_size,
    output,
    seed=0,
    max_train_patches=100_000,
    data_dir=None,
):
    """Fits the codebook on `train`, scores `test`, writes the JSON and a reconstruction grid.

    Args:
        dataset: a dataset name (`input_pipeline.check_dataset_name`), e.g. 'photos'.
        image_size: image side S.
        patch_size: P (divides S).
        codebook_size: K.
        output: JSON path; the grid (the first 16 test images over their reconstructions, as
            tools/evaluate.py draws a quantizer's) goes beside it as
            `<output stem>_reconstructions.png`.
        seed: seeds the patch subsample and k-means.
        max_train_patches: fit on at most this many train patches.
        data_dir: TFDS data dir.

    Returns:
        The metrics dict written to `output`.
    """
    _check_args(image_size, patch_size, codebook_size, max_train_patches)
    train = load_split(dataset, "train", image_size, data_dir)
    test = load_split(dataset, "test", image_size, data_dir)
    centres, fit_patches = fit_codebook(train, patch_size, codebook_size, seed, max_train_patches)
    recs, codes = reconstruct(test, centres, patch_size)
    metrics = score(test, recs, codes, codebook_size)
    grid_path = os.path.splitext(output)[0] + "_reconstructions.png"
    count = min(GRID_EXAMPLES, len(test))
    grid = image_utils.make_grid(np.concatenate([test[:count], recs[:count]]), rows=2)
    image_utils.save_png(grid_path, grid, scale=2)
    metrics.update(
        method="kmeans",
        dataset=dataset,
        split="test",
        image_size=image_size,
        patch_size=patch_size,
        codebook_size=codebook_size,
        bits_per_image=bits_per_image(image_size, patch_size, codebook_size),
        num_images=len(test),
        num_train_images=len(train),
        num_train_patches=fit_patches,
        seed=seed,
        reconstruction_grid=grid_path,
    )
    model_dir_lib.write_json(output, metrics)
    logging.info(
        "k-means %d codes on %dx%d patches of %s %d px test: PSNR %.2f dB, SSIM %.3f, usage "
        "%.3f, %.0f bits/image -> %s",
        codebook_size,
        patch_size,
        patch_size,
        dataset,
        image_size,
        metrics["psnr"],
        metrics["ssim"],
        metrics["codebook_usage"],
        metrics["bits_per_image"],
        output,
    )
    return metrics


def _check_args(image_size, patch_size, codebook_size, max_train_patches):
    for name, value in (
        ("image_size", image_size),
        ("patch_size", patch_size),
        ("codebook_size", codebook_size),
        ("max_train_patches", max_train_patches),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if image_size < SSIM_MIN_SIZE:
        raise ValueError(
            f"image_size must be at least {SSIM_MIN_SIZE} (SSIM's window), got {image_size}"
        )
    if image_size % patch_size:
        raise ValueError(f"patch_size {patch_size} must divide image_size {image_size}")
    if codebook_size > max_train_patches:
        raise ValueError(
            f"codebook_size {codebook_size} exceeds max_train_patches {max_train_patches}"
        )
