"""Mixed precision, selected from gin: `set_precision.policy = 'mixed_bfloat16'`.

`train_lib.run` calls `set_precision()` right after parsing gin and before the strategy and the
model are built, so every layer created afterwards takes the global Keras dtype policy:

- 'float32' (default): everything in float32.
- 'mixed_bfloat16': layers compute in bfloat16, variables stay float32. The choice for TPUs (and
  CPUs with bfloat16 instructions). No loss scaling is needed: bfloat16 has float32's exponent.
- 'mixed_float16': layers compute in float16, variables stay float32; for GPUs. float16 gradients
  underflow, so `optimizers.make_optimizer` wraps each optimizer in a dynamic
  `keras.optimizers.LossScaleOptimizer` and the train steps scale their loss with
  `optimizer.scale_loss` (a no-op for an unwrapped optimizer).

Under either mixed policy the numerically delicate parts are computed in float32 whatever the
policy: the quantizer's codebook, l2-normalization and code distances, the attention softmax, the
reconstruction losses, the R1 penalty, and the output heads (decoder pixels, prior and classifier
logits) with their cross-entropies.
"""

import contextlib

import gin
import keras
from absl import logging

POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
# The policy `set_precision` applies when the config names none.
DEFAULT_POLICY = "float32"


@gin.configurable
def set_precision(policy=DEFAULT_POLICY):
    """Sets the global Keras dtype policy for the layers created afterwards.

    Args:
      policy: 'float32', 'mixed_bfloat16' or 'mixed_float16'.

    Returns:
      The policy name.
    """
    if policy not in POLICIES:
        raise ValueError(
            f"set_precision.policy must be one of {list(POLICIES)}, got {policy!r} "
            "('mixed_bfloat16' for TPUs and bfloat16-capable CPUs, 'mixed_float16' for GPUs)"
        )
    keras.config.set_dtype_policy(policy)
    if policy != "float32":
        logging.info("mixed precision: layers compute in %s, variables stay float32", policy)
    return policy


def current_policy():
    """The name of the global Keras dtype policy."""
    return keras.config.dtype_policy().name


def needs_loss_scaling():
    """True under 'mixed_float16', whose gradients need a loss scale to avoid underflow."""
    return current_policy() == "mixed_float16"


@contextlib.contextmanager
def use_policy(policy):
    """Applies `policy` (as `set_precision` does) for the block, then restores the previous one."""
    previous = current_policy()
    set_precision(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
