"""Image metrics and image grids (PNG) for summaries and tools."""

import io

import numpy as np
import tensorflow as tf
from PIL import Image

from vim_tf.utils import fs


def psnr(targets, predictions, max_val=1.0):
    """Per-image PSNR in dB. targets, predictions: [B, H, W, C] in [0, max_val] -> [B] float32.

    An exact reconstruction has infinite PSNR; the MSE is floored at 1e-10 (100 dB) so averages
    stay finite.
    """
    t = tf.cast(targets, tf.float32)
    p = tf.cast(predictions, tf.float32)
    mse = tf.reduce_mean(tf.square(t - p), axis=[1, 2, 3])
    return 10.0 * tf.math.log(max_val**2 / tf.maximum(mse, 1e-10)) / tf.math.log(10.0)


def ssim(targets, predictions, max_val=1.0):
    """Per-image SSIM (Wang et al. 2004, 11x11 Gaussian window, sigma 1.5) -> [B] float32."""
    return tf.image.ssim(
        tf.cast(targets, tf.float32), tf.cast(predictions, tf.float32), max_val=max_val
    )


def to_uint8(images):
    """float images in [0, 1] -> uint8 (rounded, clipped)."""
    return np.clip(np.rint(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)


def make_grid(images, rows=None, padding=2, pad_value=255):
    """Tiles images into one picture.

    Args:
      images: [N, H, W, C] float in [0, 1] or uint8.
      rows: number of rows (default: about square); images fill row by row.
      padding: pixels between tiles.

    Returns:
      uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, 3].
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = to_uint8(images)
    if images.ndim != 4:
        raise ValueError(f"make_grid needs [N, H, W, C] images, got shape {images.shape}")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    n, h, w, c = images.shape
    rows = rows or max(1, int(np.floor(np.sqrt(n))))
    cols = int(np.ceil(n / rows))
    grid = np.full(
        (rows * (h + padding) + padding, cols * (w + padding) + padding, c), pad_value, np.uint8
    )
    for i in range(n):
        r, col = divmod(i, cols)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def save_png(path, grid, scale=1):
    """Writes a uint8 [H, W, 3] image atomically (temp file + rename), optionally enlarged.

    `path` may be on any file system `vim_tf.utils.fs` reaches; returns it.
    """
    img = Image.fromarray(np.asarray(grid, np.uint8))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    fs.write_bytes(path, buf.getvalue())
    return path
