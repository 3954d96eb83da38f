"""The batch-seed rule: batch b of a run with seed s draws with seed s * SEED_STRIDE + b.

Seeds are uint32 modulo 2**32 (the draws hash them as uint32), so any int seed is valid and large
ones wrap. A `generate` serving signature draws one batch with seed `seed * SEED_STRIDE` (batch 0);
`request_seed` gives the request seed that makes it draw batch b of seed s instead, so a served
run reproduces a local run batch for batch.
"""

import numpy as np
import tensorflow as tf

SEED_STRIDE = 1_000_003
_MOD = 1 << 32
# SEED_STRIDE is odd, so it has an inverse modulo 2**32.
_STRIDE_INVERSE = pow(SEED_STRIDE, -1, _MOD)


def batch_seed(seed, batch_index=0):
    """The draw seed of batch `batch_index` of a run seeded `seed`: uint32 scalar tensor.

    Args:
      seed: int or int tensor (any int32/int64 value; wraps modulo 2**32).
      batch_index: int or int tensor >= 0.
    """
    seed = tf.cast(_as_int64(seed), tf.uint32)
    index = tf.cast(_as_int64(batch_index), tf.uint32)
    return seed * tf.constant(SEED_STRIDE, tf.uint32) + index


def request_seed(seed, batch_index):
    """The int32 `seed` input of a `generate` signature that draws batch `batch_index` of a run
    seeded `seed` (the signature applies `batch_seed(request, 0)`)."""
    value = (int(seed) + int(batch_index) * _STRIDE_INVERSE) % _MOD
    return value - _MOD if value >= 1 << 31 else value


def _as_int64(x):
    """int tensor or Python int (any size) -> int64 tensor congruent modulo 2**32."""
    if isinstance(x, (int, np.integer)):
        x = int(x) % _MOD
    return tf.cast(x, tf.int64)
