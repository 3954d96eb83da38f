"""Pixel reconstruction losses of stage 1: logit-laplace and L2.

The logit-laplace loss is the DALL-E dVAE likelihood (Ramesh et al. 2021, sec. A.3). Pixels in
[0, 1] are squeezed into [eps, 1 - eps] so that their logit stays finite; the decoder predicts, per
pixel and channel, a location `mu` and a log-scale `ln b` of a Laplace distribution over the logit
of the squeezed pixel. Its density on the pixel scale is

    f(x' | mu, b) = exp(-|logit(x') - mu| / b) / (2 * b * x' * (1 - x')),

where the `x' (1 - x')` factor is the Jacobian of the logit. This differs from an L1 loss by the
learned scale and the Jacobian terms.

All losses return a float32 scalar and are computed in float32 even when their inputs are
bfloat16 / float16 (mixed precision), because the means over a batch of images lose too many digits
in half precision.
"""

import math

import tensorflow as tf

_LOG_2 = math.log(2.0)


def _check_eps(eps):
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")


def _to_float32(x):
    return tf.cast(tf.convert_to_tensor(x), tf.float32)


def map_pixels(x, eps=0.1):
    """Squeezes pixels from [0, 1] into [eps, 1 - eps].

    Args:
        x: [...] float pixels in [0, 1].
        eps: margin, in (0, 0.5).

    Returns:
        [...] `(1 - 2 eps) x + eps`, same dtype as `x`.
    """
    _check_eps(eps)
    x = tf.convert_to_tensor(x)
    return (1.0 - 2.0 * eps) * x + eps


def unmap_pixels(x, eps=0.1):
    """Inverse of `map_pixels`, clipped to [0, 1].

    Args:
        x: [...] float values, nominally in [eps, 1 - eps].
        eps: margin, in (0, 0.5).

    Returns:
        [...] `clip((x - eps) / (1 - 2 eps), 0, 1)`, same dtype as `x`.
    """
    _check_eps(eps)
    x = tf.convert_to_tensor(x)
    return tf.clip_by_value((x - eps) / (1.0 - 2.0 * eps), 0.0, 1.0)


def logit_laplace_loss(targets, loc, log_scale, eps=0.1):
    """Mean negative log-likelihood of the logit-laplace distribution.

    Per element, with `x' = map_pixels(targets, eps)` and `b = exp(log_scale)`:

        -log f = |logit(x') - loc| / b + log(2 b) + log(x') + log(1 - x').

    Args:
        targets: [B, H, W, C] float pixels in [0, 1].
        loc: [B, H, W, C] float, the decoder's location `mu` on the logit scale.
        log_scale: [B, H, W, C] float, the decoder's `ln b`.
        eps: pixel margin of `map_pixels`, in (0, 0.5).

    Returns:
        float32 scalar, the mean of `-log f` over all elements.
    """
    targets = _to_float32(targets)
    loc = _to_float32(loc)
    log_scale = _to_float32(log_scale)
    x = map_pixels(targets, eps)
    # log(x') and log1p(-x') are taken separately (not through logit(x')) because both are needed
    # for the Jacobian term anyway; x' is bounded away from 0 and 1 so neither is ever infinite.
    log_x = tf.math.log(x)
    log_1mx = tf.math.log1p(-x)
    logit_x = log_x - log_1mx
    nll = tf.abs(logit_x - loc) * tf.exp(-log_scale) + log_scale + _LOG_2 + log_x + log_1mx
    return tf.reduce_mean(nll)


def logit_laplace_mean(loc, eps=0.1):
    """The reconstruction shown to people: `unmap_pixels(sigmoid(loc))`.

    Use the same `eps` as the `logit_laplace_loss` that trained `loc`.

    Args:
        loc: [B, H, W, C] float, the decoder's location `mu` on the logit scale.
        eps: pixel margin of `map_pixels`, in (0, 0.5).

    Returns:
        [B, H, W, C] float32 pixels in [0, 1].
    """
    return unmap_pixels(tf.sigmoid(_to_float32(loc)), eps)


def l2_loss(targets, recon):
    """Mean squared error over all elements.

    Args:
        targets: [B, H, W, C] float.
        recon: [B, H, W, C] float.

    Returns:
        float32 scalar.
    """
    return tf.reduce_mean(tf.square(_to_float32(targets) - _to_float32(recon)))
