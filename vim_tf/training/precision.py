"""Precision of training, selected from gin: `set_precision.policy = 'bfloat16_matmuls'`.

`train_lib.run` calls `set_precision()` right after parsing gin and before the strategy and the
model are built, so every layer created (and traced) afterwards follows the policy:

- 'auto' (default): 'bfloat16_matmuls' where the hardware multiplies bfloat16 natively (a TPU, or
  a CPU with the AVX512_BF16 or AMX-BF16 instructions and no GPU), 'float32' elsewhere. The log
  says which was chosen and why.
- 'float32': everything in float32.
- 'bfloat16_matmuls': the transformer layers' matrix products take bfloat16 inputs and give
  float32 results; variables, activations, everything elementwise and the gradients outside the
  products stay float32 (`vim_tf.models.matmuls`). On bfloat16 hardware the products run at about
  twice the float32 rate while elementwise work keeps its float32 speed.
- 'mixed_bfloat16': Keras's policy, layers compute in bfloat16, variables stay float32 (bfloat16
  elementwise kernels are slow on CPU; the choice for TPUs where everything is bfloat16-fast). No
  loss scaling is needed: bfloat16 has float32's exponent.
- 'mixed_float16': layers compute in float16, variables stay float32; for GPUs. float16 gradients
  underflow, so `optimizers.make_optimizer` wraps each optimizer in a dynamic
  `keras.optimizers.LossScaleOptimizer` and the train steps scale their loss with
  `optimizer.scale_loss` (a no-op for an unwrapped optimizer).

Under every reduced-precision policy the numerically delicate parts are computed in float32: the
quantizer's projections, codebook, l2-normalization and code distances, the attention softmax, the
reconstruction losses, the R1 penalty, and the output heads (decoder pixels, prior and classifier
logits) with their cross-entropies.
"""

import contextlib

import gin
import keras
from absl import logging

from vim_tf.models import matmuls

POLICIES = ("auto", "float32", "bfloat16_matmuls", "mixed_bfloat16", "mixed_float16")
# The policy `set_precision` applies when the config names none.
DEFAULT_POLICY = "auto"


def resolve_auto(flags=None, devices=None):
    """The concrete policy 'auto' stands for on this machine, and the reason.

    Args:
      flags: CPU feature flags (default: this CPU's, from /proc/cpuinfo).
      devices: device types present, e.g. {'CPU', 'GPU'} (default: TensorFlow's physical devices).

    Returns:
      (policy, reason): ('bfloat16_matmuls' or 'float32', a phrase for the log).
    """
    dtype, reason = matmuls.native_matmul_dtype(flags, devices)
    return ("bfloat16_matmuls" if dtype == "bfloat16" else "float32"), reason


def resolve(policy):
    """`policy` with 'auto' replaced by its concrete choice; checks the name."""
    if policy not in POLICIES:
        raise ValueError(
            f"set_precision.policy must be one of {list(POLICIES)}, got {policy!r} ('auto' picks "
            "'bfloat16_matmuls' on bfloat16 hardware, else 'float32'; 'mixed_bfloat16' for "
            "TPUs, 'mixed_float16' for GPUs)"
        )
    return resolve_auto()[0] if policy == "auto" else policy


@gin.configurable
def set_precision(policy=DEFAULT_POLICY):
    """Sets the global Keras dtype policy and the matmul dtype for the layers created afterwards.

    Args:
      policy: one of POLICIES.

    Returns:
      The concrete policy name ('auto' resolved).
    """
    concrete = resolve(policy)
    if policy == "auto":
        logging.info("precision 'auto': %s, because %s", concrete, resolve_auto()[1])
    keras.config.set_dtype_policy("float32" if concrete == "bfloat16_matmuls" else concrete)
    matmuls.set_matmul_dtype("bfloat16" if concrete == "bfloat16_matmuls" else "float32")
    if concrete == "bfloat16_matmuls":
        logging.info("precision: matmuls in bfloat16 (float32 results), elementwise in float32")
    elif concrete != "float32":
        logging.info("mixed precision: layers compute in %s, variables stay float32", concrete)
    return concrete


def current_policy():
    """The name of the policy in force (as `set_precision` applied it)."""
    name = keras.config.dtype_policy().name
    if name == "float32" and matmuls.matmul_dtype() == "bfloat16":
        return "bfloat16_matmuls"
    return name


def needs_loss_scaling():
    """True under 'mixed_float16', whose gradients need a loss scale to avoid underflow."""
    return current_policy() == "mixed_float16"


def snapshot():
    """The precision settings in force (the Keras dtype policy and the matmul dtype)."""
    return keras.config.dtype_policy(), matmuls.matmul_dtype()


def restore(settings):
    """Puts back settings taken by `snapshot`."""
    keras.config.set_dtype_policy(settings[0])
    matmuls.set_matmul_dtype(settings[1])


@contextlib.contextmanager
def use_policy(policy):
    """Applies `policy` (as `set_precision` does) for the block, then restores the previous one."""
    previous = snapshot()
    try:
        set_precision(policy)
        yield
    finally:
        restore(previous)
