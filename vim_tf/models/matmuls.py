"""The precision of the networks' matrix products: float32, or bfloat16 inputs with float32 around.

With the 'bfloat16' setting every matmul of the transformer layers (`Dense` here, the attention
projections and their einsums) casts its float32 inputs to bfloat16, multiplies (the hardware
accumulates in float32) and casts the product back to float32; everything elementwise (layer
norms, activations, softmax, residual sums, losses) stays float32, and so do the gradients outside
the products. On CPUs with bfloat16 dot-product instructions (AVX512_BF16, AMX) and on TPUs the
products run at about twice the float32 rate, while bfloat16 elementwise kernels would be slower
than float32 ones (which is why the Keras 'mixed_bfloat16' policy, bfloat16 everywhere, gains
less on CPU).

Layers that decide numerics keep float32 products whatever the setting (`full_precision=True`):
the output heads (pixels, prior and classifier logits) and the quantizer's projections, so code
similarities and their argmax see float32 inputs.

The setting is read when a layer's call is traced: `vim_tf.training.precision` sets it from the
configured policy before training, and `use_matmul_dtype` scopes it (e.g. around the tracing of a
compiled function).
"""

import contextlib
import os

import keras
import tensorflow as tf
from keras import ops

MATMUL_DTYPES = ("float32", "bfloat16")
# CPU feature flags (as /proc/cpuinfo names them) of native bfloat16 dot products.
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
_setting = {"dtype": "float32"}


def cpu_flags(cpuinfo_path="/proc/cpuinfo"):
    """The CPU's feature flags (a set of names; empty where /proc/cpuinfo does not exist)."""
    if not os.path.exists(cpuinfo_path):
        return set()
    with open(cpuinfo_path) as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def native_matmul_dtype(flags=None, devices=None):
    """The fastest matmul dtype of this machine that keeps float32 elementwise work, and why.

    Args:
      flags: CPU feature flags (default: this CPU's, from /proc/cpuinfo).
      devices: device types present, e.g. {'CPU', 'GPU'} (default: TensorFlow's physical devices,
        listed without initializing the runtime, so a multi-worker strategy can still configure
        its collective ops afterwards).

    Returns:
      (dtype, reason): 'bfloat16' on a TPU or a CPU with bfloat16 dot products (and no GPU),
      'float32' elsewhere; a phrase for the log.
    """
    if devices is None:
        devices = {d.device_type for d in tf.config.list_physical_devices()}
    if "TPU" in devices:
        return "bfloat16", "a TPU is attached"
    if "GPU" in devices:
        return "float32", "a GPU is attached (set 'mixed_float16' or 'mixed_bfloat16' for it)"
    flags = cpu_flags() if flags is None else set(flags)
    found = sorted(flags.intersection(BFLOAT16_CPU_FLAGS))
    if found:
        return "bfloat16", f"the CPU has {', '.join(found)}"
    return "float32", f"the CPU has none of {', '.join(BFLOAT16_CPU_FLAGS)}"


def matmul_dtype():
    """The dtype the transformer layers multiply float32 inputs in: 'float32' or 'bfloat16'."""
    return _setting["dtype"]


def set_matmul_dtype(dtype):
    """Sets the matmul dtype for layer calls traced afterwards ('float32' or 'bfloat16')."""
    if dtype not in MATMUL_DTYPES:
        raise ValueError(f"matmul dtype must be one of {list(MATMUL_DTYPES)}, got {dtype!r}")
    _setting["dtype"] = dtype


@contextlib.contextmanager
def use_matmul_dtype(dtype):
    """Applies `dtype` (as `set_matmul_dtype`) inside the block, then restores the previous one."""
    previous = matmul_dtype()
    set_matmul_dtype(dtype)
    try:
        yield
    finally:
        set_matmul_dtype(previous)


def _reduced(tensors):
    """True when the product of `tensors` runs in bfloat16: the setting asks for it and the
    inputs are float32 (other dtypes, e.g. under a mixed Keras policy, are left as they are)."""
    return _setting["dtype"] == "bfloat16" and all(
        keras.backend.standardize_dtype(t.dtype) == "float32" for t in tensors
    )


def matmul(a, b):
    """`ops.matmul(a, b)` in the current matmul dtype; the result has a's dtype."""
    if not _reduced((a, b)):
        return ops.matmul(a, b)
    out = ops.matmul(ops.cast(a, "bfloat16"), ops.cast(b, "bfloat16"))
    return ops.cast(out, "float32")


def einsum(equation, a, b):
    """`ops.einsum(equation, a, b)` in the current matmul dtype; the result has a's dtype."""
    if not _reduced((a, b)):
        return ops.einsum(equation, a, b)
    out = ops.einsum(equation, ops.cast(a, "bfloat16"), ops.cast(b, "bfloat16"))
    return ops.cast(out, "float32")


@keras.saving.register_keras_serializable(package="vim_tf")
class Dense(keras.layers.Dense):
    """`keras.layers.Dense` whose product follows the matmul dtype setting.

    Args:
      units: output width.
      full_precision: multiply in the layer's compute dtype whatever the setting (output heads).
      **kwargs: as for `keras.layers.Dense` (activation, use_bias, initializers, name, dtype).

    Call: `x: [..., in] -> [..., units]`.
    """

    def __init__(self, units, full_precision=False, **kwargs):
        super().__init__(units, **kwargs)
        self.full_precision = bool(full_precision)

    def call(self, inputs, training=None):
        del training
        kernel = ops.convert_to_tensor(self.kernel)
        if self.full_precision:
            x = ops.matmul(inputs, kernel)
        else:
            x = matmul(inputs, kernel)
        if self.use_bias:
            x = x + self.bias
        if self.activation is not None:
            x = self.activation(x)
        return x

    def get_config(self):
        config = super().get_config()
        config.update(full_precision=self.full_precision)
        return config


@keras.saving.register_keras_serializable(package="vim_tf")
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` whose product follows the matmul dtype setting (a convolution is a
    matrix product over patches: the same bfloat16 rate applies).

    Args:
      filters, kernel_size: as for `keras.layers.Conv2D`.
      full_precision: convolve in the layer's compute dtype whatever the setting (output heads).
      **kwargs: as for `keras.layers.Conv2D` (strides, padding, initializers, name, dtype).

    Call: `x: [B, H, W, C] -> [B, H', W', filters]`.
    """

    def __init__(self, filters, kernel_size, full_precision=False, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        self.full_precision = bool(full_precision)

    def convolution_op(self, inputs, kernel):
        if self.full_precision or not _reduced((inputs, kernel)):
            return super().convolution_op(inputs, kernel)
        out = super().convolution_op(ops.cast(inputs, "bfloat16"), ops.cast(kernel, "bfloat16"))
        return ops.cast(out, "float32")

    def get_config(self):
        config = super().get_config()
        config.update(full_precision=self.full_precision)
        return config
