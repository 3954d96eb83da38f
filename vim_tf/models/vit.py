"""Vision Transformer building blocks shared by the stage-1 encoder/decoder and the stage-2 prior.

Sub-layers are stored as attributes (`block_0`, `block_1`, ...), never in Python lists: Keras 3
keeps lists in containers that `tf.train.Checkpoint` does not follow, so a list of blocks would
silently drop out of checkpoints.
"""

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from vim_tf.models import matmuls, randomness


def sincos_2d_posemb(height, width, dim, temperature=10000.0):
    """Fixed 2-D sine-cosine positional embedding (MAE / MoCo v3 style).

    Args:
      height, width: the token grid.
      dim: embedding width, a multiple of 4 (a quarter each for sin/cos of the row and column).

    Returns:
      float32 numpy array [height * width, dim], raster (row-major) order.
    """
    if dim % 4:
        raise ValueError(f"sin-cos positional embedding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / temperature ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    out_r = rows.reshape(-1)[:, None] * omega[None]
    out_c = cols.reshape(-1)[:, None] * omega[None]
    emb = np.concatenate([np.sin(out_r), np.cos(out_r), np.sin(out_c), np.cos(out_c)], axis=1)
    return emb.astype(np.float32)


def patchify(images, patch_size):
    """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C], patches in raster order."""
    b, h, w, c = ops.shape(images)
    p = patch_size
    x = ops.reshape(images, (-1, h // p, p, w // p, p, c))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, (h // p) * (w // p), p * p * c))


def unpatchify(tokens, grid_size, patch_size, channels):
    """[B, h*w, p*p*C] -> [B, h*p, w*p, C]; the inverse of `patchify`."""
    p = patch_size
    x = ops.reshape(tokens, (-1, grid_size, grid_size, p, p, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, grid_size * p, grid_size * p, channels))


# GELU's tanh form 0.5 x (1 + tanh(z)), z = sqrt(2/pi) (x + 0.044715 x^3), equals
# x * sigmoid(2 z): 2 z = x (_GELU_A + _GELU_B x^2).
_GELU_A = math.sqrt(8.0 / math.pi)
_GELU_B = _GELU_A * 0.044715


@tf.custom_gradient
def gelu(x):
    """GELU, tanh form (as ViT's reference code), with a hand-written gradient.

    The same function as `ops.gelu(x, approximate=True)`, written as x * sigmoid(2 z) and with
    its derivative s + x s (1 - s) dz2/dx (s the sigmoid): about half the elementwise passes of
    the automatic gradient of the tanh form, which matters where ops are not fused (CPU graphs).

    Args:
      x: float tensor of any shape.

    Returns:
      GELU(x), same shape and dtype.
    """
    x2 = ops.square(x)
    s = ops.sigmoid(x * (_GELU_A + _GELU_B * x2))

    def grad(upstream):
        slope = s + x * s * (1.0 - s) * (_GELU_A + (3.0 * _GELU_B) * x2)
        return upstream * slope

    return x * s, grad


def _layer_norm(x, gamma, beta, epsilon):
    """Layer normalization over the last axis with a hand-written gradient (all float32).

    Args:
      x: [..., D] float32; gamma, beta: [D] float32.

    Returns:
      (x - mean) / sqrt(var + epsilon) * gamma + beta, [..., D].
    """

    @tf.custom_gradient
    def norm(x, gamma, beta):
        mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
        rstd = tf.math.rsqrt(var + epsilon)
        xhat = (x - mean) * rstd

        def grad(upstream):
            outer = tf.range(tf.rank(upstream) - 1)
            d_beta = tf.reduce_sum(upstream, axis=outer)
            d_gamma = tf.reduce_sum(upstream * xhat, axis=outer)
            g = upstream * gamma
            d_x = rstd * (
                g
                - tf.reduce_mean(g, axis=-1, keepdims=True)
                - xhat * tf.reduce_mean(g * xhat, axis=-1, keepdims=True)
            )
            return d_x, d_gamma, d_beta

        return xhat * gamma + beta, grad

    return norm(x, gamma, beta)


@keras.saving.register_keras_serializable(package="vim_tf")
class LayerNorm(keras.layers.LayerNormalization):
    """`keras.layers.LayerNormalization` over the last axis (with scale and center), computed in
    float32 with a hand-written gradient: fewer elementwise passes than the automatic one.

    Same variables (gamma, beta) and config as the Keras layer, so checkpoints are shared.

    Call: `x: [..., D] -> [..., D]` in the layer's compute dtype.
    """

    def call(self, inputs):
        if tuple(self.axis) not in ((-1,), (len(inputs.shape) - 1,)):
            return super().call(inputs)
        x = ops.cast(inputs, "float32")
        gamma = ops.cast(ops.convert_to_tensor(self.gamma), "float32")
        beta = ops.cast(ops.convert_to_tensor(self.beta), "float32")
        return ops.cast(_layer_norm(x, gamma, beta, self.epsilon), self.compute_dtype)


@keras.saving.register_keras_serializable(package="vim_tf")
class Attention(keras.layers.Layer):
    """Multi-head self-attention with one fused q/k/v projection.

    Args:
      num_heads: attention heads; `hidden_dim` must divide evenly.
      dropout: dropout on the attention probabilities.
      causal: mask future positions (the stage-2 prior).

    Call: `x: [B, N, D] -> [B, N, D]`.
    """

    def __init__(self, num_heads, dropout=0.0, causal=False, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.dropout = dropout
        self.causal = causal

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim % self.num_heads:
            raise ValueError(f"hidden_dim {dim} must be divisible by num_heads {self.num_heads}")
        self.head_dim = dim // self.num_heads
        init = keras.initializers.GlorotUniform()
        self.qkv_kernel = self.add_weight(name="qkv_kernel", shape=(dim, 3 * dim), initializer=init)
        self.qkv_bias = self.add_weight(name="qkv_bias", shape=(3 * dim,), initializer="zeros")
        self.out_kernel = self.add_weight(name="out_kernel", shape=(dim, dim), initializer=init)
        self.out_bias = self.add_weight(name="out_bias", shape=(dim,), initializer="zeros")
        self.attn_dropout = randomness.ReplicaDropout(self.dropout)

    def split_heads(self, x):
        """[B, N, 3D] -> q, k, v each [B, heads, N, head_dim]."""
        n = ops.shape(x)[1]
        # A split (gradient: one concat), not three slices of a stacked tensor: each slice's
        # gradient is a full-size zero tensor with one third filled in (StridedSliceGrad was a
        # fifth of the stage-1 train step on CPU).
        return tuple(
            ops.transpose(ops.reshape(t, (-1, n, self.num_heads, self.head_dim)), (0, 2, 1, 3))
            for t in ops.split(x, 3, axis=-1)
        )

    def _weight(self, variable):
        # Inside the layer's call Keras has already cast the variable to the compute dtype; the
        # cached sampler calls the projections outside it, where the cast is explicit.
        return ops.cast(variable, self.compute_dtype)

    def project_qkv(self, x):
        return matmuls.matmul(x, self._weight(self.qkv_kernel)) + self._weight(self.qkv_bias)

    def project_out(self, heads):
        """[B, heads, N, head_dim] -> [B, N, D]."""
        n = ops.shape(heads)[2]
        x = ops.reshape(ops.transpose(heads, (0, 2, 1, 3)), (-1, n, self.num_heads * self.head_dim))
        return matmuls.matmul(x, self._weight(self.out_kernel)) + self._weight(self.out_bias)

    def attend(self, q, k, v, mask=None, training=None):
        """Scaled dot-product attention; `mask` broadcasts to [B, heads, Nq, Nk], True = keep."""
        scale = 1.0 / np.sqrt(self.head_dim)
        logits = matmuls.einsum("bhqd,bhkd->bhqk", q * ops.cast(scale, q.dtype), k)
        # Softmax in float32 even under mixed precision: large logits overflow float16.
        logits = ops.cast(logits, "float32")
        if mask is not None:
            logits = ops.where(mask, logits, ops.cast(-1e9, "float32"))
        probs = ops.cast(ops.softmax(logits, axis=-1), v.dtype)
        probs = self.attn_dropout(probs, training=training)
        return matmuls.einsum("bhqk,bhkd->bhqd", probs, v)

    def call(self, x, training=None):
        q, k, v = self.split_heads(self.project_qkv(x))
        mask = None
        if self.causal:
            n = ops.shape(x)[1]
            mask = ops.tril(ops.ones((n, n), dtype="bool"))[None, None]
        return self.project_out(self.attend(q, k, v, mask=mask, training=training))

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, dropout=self.dropout, causal=self.causal)
        return config


@keras.saving.register_keras_serializable(package="vim_tf")
class TransformerBlock(keras.layers.Layer):
    """Pre-LayerNorm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)) (GELU MLP).

    Args:
      num_heads, mlp_dim: attention heads and MLP hidden width.
      dropout: dropout on the residual branches, the MLP activation and the attention weights.
      causal: causal self-attention.
    """

    def __init__(self, num_heads, mlp_dim, dropout=0.0, causal=False, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.causal = causal
        self.ln_1 = LayerNorm(epsilon=1e-6, name="ln_1")
        self.attn = Attention(num_heads, dropout=dropout, causal=causal, name="attn")
        self.ln_2 = LayerNorm(epsilon=1e-6, name="ln_2")
        self.mlp_in = matmuls.Dense(mlp_dim, name="mlp_in")
        self.mlp_out = None  # built once the width is known
        self.drop = randomness.ReplicaDropout(dropout)

    def build(self, input_shape):
        dim = input_shape[-1]
        self.ln_1.build(input_shape)
        self.attn.build(input_shape)
        self.ln_2.build(input_shape)
        self.mlp_in.build(input_shape)
        self.mlp_out = matmuls.Dense(dim, name="mlp_out")
        self.mlp_out.build(tuple(input_shape[:-1]) + (self.mlp_dim,))

    def mlp(self, x, training=None):
        h = gelu(self.mlp_in(x))
        h = self.drop(h, training=training)
        return self.mlp_out(h)

    def call(self, x, training=None):
        x = x + self.drop(self.attn(self.ln_1(x), training=training), training=training)
        return x + self.drop(self.mlp(self.ln_2(x), training=training), training=training)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout=self.dropout, causal=self.causal
        )
        return config


@keras.saving.register_keras_serializable(package="vim_tf")
class TransformerStack(keras.layers.Layer):
    """`num_layers` transformer blocks, kept as attributes `block_0..block_{n-1}`.

    Call: `x: [B, N, D] -> [B, N, D]`; `return_all=True` also returns every block's output.
    """

    def __init__(self, num_layers, num_heads, mlp_dim, dropout=0.0, causal=False, **kwargs):
        super().__init__(**kwargs)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.causal = causal
        for i in range(num_layers):
            setattr(
                self,
                f"block_{i}",
                TransformerBlock(num_heads, mlp_dim, dropout, causal, name=f"block_{i}"),
            )

    def block(self, i):
        return getattr(self, f"block_{i}")

    def build(self, input_shape):
        for i in range(self.num_layers):
            self.block(i).build(input_shape)

    def call(self, x, training=None, return_all=False):
        outputs = []
        for i in range(self.num_layers):
            x = self.block(i)(x, training=training)
            outputs.append(x)
        return (x, outputs) if return_all else x

    def get_config(self):
        config = super().get_config()
        config.update(
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            dropout=self.dropout,
            causal=self.causal,
        )
        return config


def _check_grid(image_size, patch_size):
    if patch_size < 1 or image_size < 1:
        raise ValueError(f"image_size and patch_size must be >= 1, got {image_size}, {patch_size}")
    if image_size % patch_size:
        raise ValueError(
            f"image_size {image_size} is not divisible by patch_size {patch_size}: valid image "
            f"sizes are multiples of {patch_size}"
        )
    return image_size // patch_size


class _ViTStack(keras.layers.Layer):
    """What the ViT-VQGAN encoder and decoder share: sizes, the transformer, the output LayerNorm
    and the first layer of the tanh feed-forward, and the fixed positional embedding."""

    def __init__(
        self,
        image_size,
        patch_size,
        num_layers,
        num_heads,
        hidden_dim,
        mlp_dim,
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.grid_size = _check_grid(image_size, patch_size)
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.transformer = TransformerStack(
            num_layers, num_heads, mlp_dim, dropout, name="transformer"
        )
        self.ln_out = LayerNorm(epsilon=1e-6, name="ln_out")
        self.ffn_in = matmuls.Dense(mlp_dim, name="ffn_in")
        self.posemb = sincos_2d_posemb(self.grid_size, self.grid_size, hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            hidden_dim=self.hidden_dim,
            mlp_dim=self.mlp_dim,
            dropout=self.dropout,
        )
        return config


@keras.saving.register_keras_serializable(package="vim_tf")
class ViTEncoder(_ViTStack):
    """Image -> one vector per patch (the ViT-VQGAN encoder).

    Patches (p x p) are flattened and linearly embedded, a fixed 2-D sin-cos positional embedding
    is added, pre-LN transformer blocks follow, then LayerNorm and a two-layer feed-forward with
    tanh in the middle (the paper, Sec. 3.1). No activation at the output.

    Args:
      image_size, patch_size: square images, square patches; the grid is image_size/patch_size.
      num_layers, num_heads, hidden_dim, mlp_dim: transformer size (the paper, Table 1).
      dropout: 0 in the paper's stage 1.

    Call: `images: [B, H, W, 3] float in [0, 1] -> [B, (H/p)*(W/p), hidden_dim]`.

    Example:
      >>> enc = ViTEncoder(32, 4, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128)
      >>> enc(keras.ops.zeros((2, 32, 32, 3))).shape
      (2, 64, 64)
    """

    def __init__(
        self,
        image_size,
        patch_size,
        num_layers,
        num_heads,
        hidden_dim,
        mlp_dim,
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(
            image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim, dropout, **kwargs
        )
        self.patch_embed = matmuls.Dense(hidden_dim, name="patch_embed")
        self.ffn_out = matmuls.Dense(hidden_dim, name="ffn_out")

    def build(self, input_shape):
        n = self.grid_size**2
        self.patch_embed.build((None, n, self.patch_size**2 * input_shape[-1]))
        self.transformer.build((None, n, self.hidden_dim))
        self.ln_out.build((None, n, self.hidden_dim))
        self.ffn_in.build((None, n, self.hidden_dim))
        self.ffn_out.build((None, n, self.mlp_dim))

    def call(self, images, training=None):
        x = self.patch_embed(patchify(images * 2.0 - 1.0, self.patch_size))
        x = x + ops.cast(self.posemb, x.dtype)[None]
        x = self.transformer(x, training=training)
        return self.ffn_out(ops.tanh(self.ffn_in(self.ln_out(x))))


@keras.saving.register_keras_serializable(package="vim_tf")
class ViTDecoder(_ViTStack):
    """Per-token vectors -> image distribution parameters (the ViT-VQGAN decoder).

    Tokens get the fixed 2-D positional embedding, pre-LN transformer blocks, LayerNorm, then the
    two-layer feed-forward with tanh in the middle whose second layer emits each token's p x p
    patch of `out_channels` values: channels [0:3] the logit-laplace location mu, [3:6] its
    log-scale ln b (the paper, Sec. 3.2). No activation here: the sigmoid on mu lives in the likelihood.

    Call: `tokens: [B, h*w, hidden_dim] -> [B, H, W, out_channels]`.
    """

    def __init__(
        self,
        image_size,
        patch_size,
        num_layers,
        num_heads,
        hidden_dim,
        mlp_dim,
        dropout=0.0,
        out_channels=6,
        **kwargs,
    ):
        super().__init__(
            image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim, dropout, **kwargs
        )
        self.out_channels = out_channels
        # Output head in float32 under mixed precision (the logit-laplace location/log-scale).
        self.to_pixels = matmuls.Dense(
            patch_size**2 * out_channels, full_precision=True, name="to_pixels", dtype="float32"
        )

    def build(self, input_shape):
        n = self.grid_size**2
        self.transformer.build((None, n, self.hidden_dim))
        self.ln_out.build((None, n, self.hidden_dim))
        self.ffn_in.build((None, n, self.hidden_dim))
        self.to_pixels.build((None, n, self.mlp_dim))

    def call(self, tokens, training=None):
        x = tokens + ops.cast(self.posemb, tokens.dtype)[None]
        x = self.transformer(x, training=training)
        x = self.to_pixels(ops.tanh(self.ffn_in(self.ln_out(x))))
        return unpatchify(x, self.grid_size, self.patch_size, self.out_channels)

    def get_config(self):
        config = super().get_config()
        config.update(out_channels=self.out_channels)
        return config
