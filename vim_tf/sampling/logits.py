"""Logit processing and draws of autoregressive sampling: temperature, top-k, top-p, guidance,
counter-based categorical draws.

Every function takes tensors for its knobs (so one traced graph serves any setting) and keeps
static shapes (XLA-compilable).
"""

import numpy as np
import tensorflow as tf

NEG_INF = -1e9


def apply_top_k(logits, k):
    """Keeps the k largest logits per row (k == 0: all). logits [B, K] float32; k int scalar."""
    k = tf.cast(k, tf.int32)
    vocab = tf.shape(logits)[-1]
    sorted_logits = tf.sort(logits, axis=-1, direction="DESCENDING")
    kth = tf.gather(sorted_logits, tf.clip_by_value(k - 1, 0, vocab - 1), axis=-1)[:, None]
    masked = tf.where(logits < kth, NEG_INF, logits)
    return tf.where(k > 0, masked, logits)


def apply_top_p(logits, p):
    """Nucleus filtering: keeps the smallest set of top tokens whose probability reaches p.

    logits [B, K] float32; p float scalar in (0, 1] (1: all). The most likely token is always kept.
    """
    p = tf.cast(p, tf.float32)
    sorted_logits = tf.sort(logits, axis=-1, direction="DESCENDING")
    probs = tf.nn.softmax(sorted_logits, axis=-1)
    # Probability mass strictly before each sorted position: a token is kept while that is < p.
    before = tf.cumsum(probs, axis=-1, exclusive=True)
    keep = before < p
    threshold = tf.reduce_min(tf.where(keep, sorted_logits, -NEG_INF), axis=-1, keepdims=True)
    masked = tf.where(logits < threshold, NEG_INF, logits)
    return tf.where(p < 1.0, masked, logits)


def process_logits(logits, temperature, top_k, top_p):
    """Temperature, then top-k, then top-p. logits [B, K] -> [B, K] float32.

    A knob known when tracing (a Python number or a constant) that is off (temperature 1,
    top_k 0, top_p 1) adds nothing to the graph; a top-k or top-p tensor runs its filter under
    a `tf.cond`, so only the filters that are on cost a sort.
    """
    logits = tf.cast(logits, tf.float32)
    if _static(temperature) != 1:
        logits = logits / tf.cast(temperature, tf.float32)
    logits = _filter(logits, top_k, 0, lambda x: apply_top_k(x, top_k))
    return _filter(logits, top_p, 1, lambda x: apply_top_p(x, top_p))


def _static(value):
    """The value of a Python number or a constant tensor; None when known only at run time."""
    if isinstance(value, (int, float, np.number)):
        return value
    static = tf.get_static_value(value)
    return None if static is None else static.item()


def _filter(logits, knob, off, apply):
    """apply(logits) unless `knob` is `off`: decided when tracing if the knob is known then,
    else at run time by a `tf.cond`."""
    value = _static(knob)
    if value is None:
        return tf.cond(tf.not_equal(knob, off), lambda: apply(logits), lambda: logits)
    return logits if value == off else apply(logits)


def guide(cond_logits, uncond_logits, scale):
    """Classifier-free guidance: uncond + scale * (cond - uncond); scale 1 = conditional only."""
    scale = tf.cast(scale, tf.float32)
    return uncond_logits + scale * (cond_logits - uncond_logits)


def _fmix32(h):
    """MurmurHash3's 32-bit finalizer: a bijective avalanche mix of uint32 values."""
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 16))
    h = h * tf.constant(0x85EBCA6B, tf.uint32)
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 13))
    h = h * tf.constant(0xC2B2AE35, tf.uint32)
    return tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 16))


def uniform(shape2d, seed, position, row_offset=0):
    """Counter-based uniforms in (0, 1) of shape [B, K], a pure function of (seed, position).

    Integer hashing of (seed, position, row, column) instead of TF's stateless random ops:
    those give different numbers under XLA when the seed changes inside a while loop, and the
    same seed must give the same samples with and without XLA.

    `row_offset` (int scalar, tensor allowed) numbers the rows from there: a replica drawing rows
    [o, o + B) of a batch passes o and draws exactly what one device drawing the whole batch
    draws for those rows.
    """
    rows, cols = shape2d[0], shape2d[1]
    first = tf.cast(row_offset, tf.int32)
    key = _fmix32(
        _fmix32(tf.cast(seed, tf.uint32) + tf.constant(0x9E3779B9, tf.uint32))
        ^ tf.cast(position, tf.uint32)
    )
    idx = tf.cast((first + tf.range(rows))[:, None] * cols + tf.range(cols)[None, :], tf.uint32)
    h = _fmix32(_fmix32(idx ^ key) + key)
    # The top 24 bits as a float in (0, 1).
    return (tf.cast(tf.bitwise.right_shift(h, 8), tf.float32) + 0.5) * (1.0 / (1 << 24))


def draw(logits, seed, position, row_offset=0):
    """One token per row from categorical(logits), a pure function of (seed, position).

    Gumbel-max over counter-based uniforms (see `uniform`): identical with and without XLA.

    Args:
      logits: [B, K] float32 processed logits.
      seed: int scalar, the user's seed.
      position: int scalar, the sequence position (each position gets its own stream).
      row_offset: int scalar, the batch row of logits' first row (see `uniform`).

    Returns:
      int32 [B].
    """
    u = uniform(tf.shape(logits), seed, position, row_offset)
    gumbel = -tf.math.log(-tf.math.log(u))
    return tf.argmax(tf.cast(logits, tf.float32) + gumbel, axis=-1, output_type=tf.int32)
