"""CNN VQGAN: the convolutional tokenizer of the paper's Table 4 ("architecture: CNN" row), an
encoder/decoder of the VQGAN kind (Esser et al., *Taming Transformers*, CVPR 2021) around the same
factorized l2-normalized codebook and logit-laplace output as `ViTVQGAN`.

Encoder: a 3x3 stem, then per resolution level residual blocks (GroupNorm, swish, 3x3 conv, twice)
and a stride-2 3x3 convolution down to the next level; at the lowest resolution a residual block,
an optional self-attention block over the grid positions and another residual block; GroupNorm,
swish and a 3x3 convolution give one vector per grid cell. The decoder mirrors it: a 3x3 stem at
the lowest resolution, the middle blocks, per level one residual block more than the encoder and
a nearest-neighbour 2x upsampling followed by a 3x3 convolution, and a float32 3x3 output head
with the logit-laplace location and log-scale per pixel.

Sub-layers are attributes (`level_0_block_0`, ...), never Python lists: Keras 3 keeps lists in
containers that `tf.train.Checkpoint` does not follow.
"""

import gin
import keras
from keras import ops

from vim_tf.config import checks
from vim_tf.models import matmuls, tokenizer, vit


def check_architecture(owner, channels, channel_multipliers, num_res_blocks, num_groups):
    """Checks the shared encoder/decoder arguments; returns them normalized.

    Returns:
      (channels, channel_multipliers tuple, num_res_blocks, num_groups), all ints.

    Raises:
      ValueError: naming the bad argument, its value and what would be valid.
    """
    channels = checks.check_int(owner, "channels", channels)
    num_res_blocks = checks.check_int(owner, "num_res_blocks", num_res_blocks)
    num_groups = checks.check_int(owner, "num_groups", num_groups)
    if isinstance(channel_multipliers, (str, bytes)) or not hasattr(channel_multipliers, "__len__"):
        channel_multipliers = None
    if not channel_multipliers:
        raise ValueError(
            f"{owner}.channel_multipliers must be a non-empty list of ints >= 1 (the width of "
            f"each resolution level in units of channels, e.g. (1, 2, 2)), got "
            f"{channel_multipliers!r}"
        )
    mults = tuple(
        checks.check_int(owner, f"channel_multipliers[{i}]", m)
        for i, m in enumerate(channel_multipliers)
    )
    for i, m in enumerate(mults):
        if (channels * m) % num_groups:
            valid = [g for g in range(1, channels * m + 1) if channels * m % g == 0]
            raise ValueError(
                f"{owner}.num_groups={num_groups} does not divide the width {channels * m} of "
                f"level {i} ({owner}.channels={channels} * channel_multipliers[{i}]={m}): "
                f"GroupNorm needs it to; valid group counts for that width are {valid}"
            )
    return channels, mults, num_res_blocks, num_groups


def downsampling_factor(channel_multipliers):
    """Pixels per grid cell along a side: one stride-2 step between consecutive levels."""
    return 2 ** (len(channel_multipliers) - 1)


def _group_norm(num_groups, name):
    # Keras's GroupNormalization normalizes in float32 under every dtype policy.
    return keras.layers.GroupNormalization(num_groups, epsilon=1e-6, name=name)


def _conv(filters, kernel_size=3, **kwargs):
    return matmuls.Conv2D(filters, kernel_size, padding="same", **kwargs)


@keras.saving.register_keras_serializable(package="vim_tf")
class ResBlock(keras.layers.Layer):
    """VQGAN residual block: x + conv(swish(GN(conv(swish(GN(x)))))), the skip through a 1x1
    convolution when the width changes.

    Args:
      filters: output width.
      num_groups: GroupNorm groups (must divide the input width and `filters`).

    Call: `x: [B, H, W, C] -> [B, H, W, filters]`.
    """

    def __init__(self, filters, num_groups=32, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.num_groups = int(num_groups)
        self.norm_1 = _group_norm(num_groups, "norm_1")
        self.conv_1 = _conv(filters, name="conv_1")
        self.norm_2 = _group_norm(num_groups, "norm_2")
        self.conv_2 = _conv(filters, name="conv_2")
        self.shortcut = None  # made in build when the input width differs

    def build(self, input_shape):
        out_shape = tuple(input_shape[:-1]) + (self.filters,)
        self.norm_1.build(input_shape)
        self.conv_1.build(input_shape)
        self.norm_2.build(out_shape)
        self.conv_2.build(out_shape)
        if input_shape[-1] != self.filters:
            self.shortcut = _conv(self.filters, 1, name="shortcut")
            self.shortcut.build(input_shape)

    def call(self, x):
        h = self.conv_1(ops.silu(self.norm_1(x)))
        h = self.conv_2(ops.silu(self.norm_2(h)))
        skip = x if self.shortcut is None else self.shortcut(x)
        return skip + h

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, num_groups=self.num_groups)
        return config


@keras.saving.register_keras_serializable(package="vim_tf")
class AttentionBlock(keras.layers.Layer):
    """VQGAN's self-attention block: x + Attention(GN(x)) over the H*W positions (one head).

    Args:
      num_groups: GroupNorm groups (must divide the width).

    Call: `x: [B, H, W, C] -> [B, H, W, C]`.
    """

    def __init__(self, num_groups=32, **kwargs):
        super().__init__(**kwargs)
        self.num_groups = int(num_groups)
        self.norm = _group_norm(num_groups, "norm")
        self.attn = vit.Attention(num_heads=1, name="attn")

    def build(self, input_shape):
        self.norm.build(input_shape)
        self.attn.build((input_shape[0], input_shape[1] * input_shape[2], input_shape[3]))

    def call(self, x):
        _, h, w, c = ops.shape(x)
        tokens = ops.reshape(self.norm(x), (-1, h * w, c))
        return x + ops.reshape(self.attn(tokens), (-1, h, w, c))

    def get_config(self):
        config = super().get_config()
        config.update(num_groups=self.num_groups)
        return config


class _CNNStack(keras.layers.Layer):
    """What the CNN encoder and decoder share: argument checks, the level widths and the grid,
    the middle blocks at the lowest resolution and the output normalization."""

    def __init__(
        self,
        image_size,
        channels,
        channel_multipliers,
        num_res_blocks,
        attention=True,
        num_groups=32,
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.image_size = checks.check_int(owner, "image_size", image_size)
        channels, mults, num_res_blocks, num_groups = check_architecture(
            owner, channels, channel_multipliers, num_res_blocks, num_groups
        )
        factor = downsampling_factor(mults)
        if image_size % factor:
            raise ValueError(
                f"{owner}.image_size={image_size} is not divisible by the downsampling factor "
                f"{factor} (channel_multipliers={list(mults)}): valid image sizes are multiples "
                f"of {factor}"
            )
        self.channels = channels
        self.channel_multipliers = mults
        self.num_res_blocks = num_res_blocks
        self.attention = bool(attention)
        self.num_groups = num_groups
        self.widths = [channels * m for m in mults]
        self.grid_size = image_size // factor

    def _make_middle(self):
        """The blocks at the lowest resolution (made where the forward pass reaches them, so
        the weights are listed in call order)."""
        self.mid_block_1 = ResBlock(self.widths[-1], self.num_groups, name="mid_block_1")
        self.mid_attention = (
            AttentionBlock(self.num_groups, name="mid_attention") if self.attention else None
        )
        self.mid_block_2 = ResBlock(self.widths[-1], self.num_groups, name="mid_block_2")

    def _build_middle(self, shape):
        self.mid_block_1.build(shape)
        if self.mid_attention is not None:
            self.mid_attention.build(shape)
        self.mid_block_2.build(shape)

    def _middle(self, x):
        x = self.mid_block_1(x)
        if self.mid_attention is not None:
            x = self.mid_attention(x)
        return self.mid_block_2(x)

    def get_config(self):
        config = super().get_config()
        config.update(
            image_size=self.image_size,
            channels=self.channels,
            channel_multipliers=self.channel_multipliers,
            num_res_blocks=self.num_res_blocks,
            attention=self.attention,
            num_groups=self.num_groups,
        )
        return config


@keras.saving.register_keras_serializable(package="vim_tf")
class CNNEncoder(_CNNStack):
    """Image -> one vector per grid cell (the CNN VQGAN encoder).

    Args:
      image_size: square images; a multiple of the downsampling factor
        2 ** (len(channel_multipliers) - 1).
      channels: width of the first level; level i is channels * channel_multipliers[i] wide.
      channel_multipliers: one entry per resolution level.
      num_res_blocks: residual blocks per level.
      attention: a self-attention block between the two middle residual blocks.
      num_groups: GroupNorm groups.

    Call: `images: [B, H, W, 3] float in [0, 1] -> [B, h*w, width]`, raster order, width =
    channels * channel_multipliers[-1].

    Example:
      >>> enc = CNNEncoder(16, 8, (1, 2), num_res_blocks=1, num_groups=4)
      >>> enc(keras.ops.zeros((2, 16, 16, 3))).shape
      (2, 64, 16)
    """

    def __init__(self, image_size, channels, channel_multipliers, num_res_blocks, **kwargs):
        super().__init__(image_size, channels, channel_multipliers, num_res_blocks, **kwargs)
        self.conv_in = _conv(channels, name="conv_in")
        for i, width in enumerate(self.widths):
            for j in range(self.num_res_blocks):
                name = f"level_{i}_block_{j}"
                setattr(self, name, ResBlock(width, self.num_groups, name=name))
            if i < len(self.widths) - 1:
                setattr(self, f"level_{i}_down", _conv(width, strides=2, name=f"level_{i}_down"))
        self._make_middle()
        self.norm_out = _group_norm(self.num_groups, "norm_out")
        self.conv_out = _conv(self.widths[-1], name="conv_out")

    def build(self, input_shape):
        size = self.image_size
        shape = (None, size, size, input_shape[-1])
        self.conv_in.build(shape)
        shape = (None, size, size, self.channels)
        for i, width in enumerate(self.widths):
            for j in range(self.num_res_blocks):
                getattr(self, f"level_{i}_block_{j}").build(shape)
                shape = (None, size, size, width)
            if i < len(self.widths) - 1:
                getattr(self, f"level_{i}_down").build(shape)
                size //= 2
                shape = (None, size, size, width)
        self._build_middle(shape)
        self.norm_out.build(shape)
        self.conv_out.build(shape)

    def call(self, images, training=None):
        del training  # no dropout, no batch statistics
        x = self.conv_in(images * 2.0 - 1.0)
        for i in range(len(self.widths)):
            for j in range(self.num_res_blocks):
                x = getattr(self, f"level_{i}_block_{j}")(x)
            if i < len(self.widths) - 1:
                x = getattr(self, f"level_{i}_down")(x)
        x = self.conv_out(ops.silu(self.norm_out(self._middle(x))))
        return ops.reshape(x, (-1, self.grid_size * self.grid_size, self.widths[-1]))


@keras.saving.register_keras_serializable(package="vim_tf")
class CNNDecoder(_CNNStack):
    """Per-cell vectors -> image distribution parameters (the CNN VQGAN decoder).

    Arguments as `CNNEncoder`, plus `out_channels` (6: channels [0:3] the logit-laplace location
    mu, [3:6] its log-scale ln b). Each level has num_res_blocks + 1 residual blocks (as VQGAN's
    decoder); the output head is float32 under mixed precision.

    Call: `tokens: [B, h*w, width] -> [B, H, W, out_channels]`.
    """

    def __init__(
        self, image_size, channels, channel_multipliers, num_res_blocks, out_channels=6, **kwargs
    ):
        super().__init__(image_size, channels, channel_multipliers, num_res_blocks, **kwargs)
        self.out_channels = int(out_channels)
        self.conv_in = _conv(self.widths[-1], name="conv_in")
        self._make_middle()
        for i in reversed(range(len(self.widths))):
            width = self.widths[i]
            for j in range(self.num_res_blocks + 1):
                name = f"level_{i}_block_{j}"
                setattr(self, name, ResBlock(width, self.num_groups, name=name))
            if i > 0:
                setattr(self, f"level_{i}_up", _conv(width, name=f"level_{i}_up"))
        self.norm_out = _group_norm(self.num_groups, "norm_out")
        self.conv_out = _conv(
            self.out_channels, full_precision=True, name="conv_out", dtype="float32"
        )

    def build(self, input_shape):
        size = self.grid_size
        shape = (None, size, size, input_shape[-1])
        self.conv_in.build(shape)
        shape = (None, size, size, self.widths[-1])
        self._build_middle(shape)
        for i in reversed(range(len(self.widths))):
            for j in range(self.num_res_blocks + 1):
                getattr(self, f"level_{i}_block_{j}").build(shape)
                shape = (None, size, size, self.widths[i])
            if i > 0:
                size *= 2
                shape = (None, size, size, self.widths[i])
                getattr(self, f"level_{i}_up").build(shape)
        self.norm_out.build(shape)
        self.conv_out.build(shape)

    def call(self, tokens, training=None):
        del training
        x = ops.reshape(tokens, (-1, self.grid_size, self.grid_size, ops.shape(tokens)[-1]))
        x = self._middle(self.conv_in(x))
        for i in reversed(range(len(self.widths))):
            for j in range(self.num_res_blocks + 1):
                x = getattr(self, f"level_{i}_block_{j}")(x)
            if i > 0:
                x = ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2)  # nearest-neighbour 2x
                x = getattr(self, f"level_{i}_up")(x)
        return self.conv_out(ops.silu(self.norm_out(x)))

    def get_config(self):
        config = super().get_config()
        config.update(out_channels=self.out_channels)
        return config


@gin.register
@keras.saving.register_keras_serializable(package="vim_tf")
class CNNVQGAN(tokenizer.Tokenizer):
    """CNN encoder -> factorized l2-normalized codebook -> CNN decoder (the paper's Table 4
    "architecture: CNN" tokenizer; the same interface, codebook, output and training as
    `ViTVQGAN`).

    Args:
      image_size: square images; the token grid is image_size / 2 ** (len(channel_multipliers)
        - 1) a side (32 px with channel_multipliers (1, 2, 2): an 8 x 8 grid).
      channels, channel_multipliers, num_res_blocks, attention, num_groups: the encoder and
        decoder (see `CNNEncoder`); level i is channels * channel_multipliers[i] wide, the codes
        are projected from and back to the last level's width.
      codebook_size, code_dim, beta, l2_normalize, restart_dead_codes, eps, min_log_scale: as
        for `ViTVQGAN` (`vim_tf.models.tokenizer.Tokenizer`).

    Call: as `ViTVQGAN`: `images: [B, H, W, 3] float in [0, 1] -> dict` with `reconstruction`,
    `loc`, `log_scale` [B, H, W, 3], `indices` int32 [B, h, w] and the codebook's outputs.

    Example:
      >>> net = CNNVQGAN(16, channels=8, channel_multipliers=(1, 2, 2), num_groups=4,
      ...                codebook_size=16, code_dim=4)
      >>> tokens = net.encode(images)         # int32 [B, 4, 4]
      >>> images = net.decode(tokens)         # float32 [B, 16, 16, 3] in [0, 1]
    """

    def __init__(
        self,
        image_size=gin.REQUIRED,
        channels=128,
        channel_multipliers=(1, 2, 2, 4),
        num_res_blocks=2,
        attention=True,
        num_groups=32,
        codebook_size=8192,
        code_dim=32,
        beta=0.25,
        l2_normalize=True,
        restart_dead_codes=False,
        eps=0.1,
        min_log_scale=-5.0,
        **kwargs,
    ):
        super().__init__(
            image_size,
            codebook_size,
            code_dim,
            beta,
            l2_normalize,
            restart_dead_codes,
            eps,
            min_log_scale,
            **kwargs,
        )
        arch = check_architecture(
            "CNNVQGAN", channels, channel_multipliers, num_res_blocks, num_groups
        )
        self.channels, self.channel_multipliers, self.num_res_blocks, self.num_groups = arch
        self.attention = bool(attention)
        self.downsampling_factor = downsampling_factor(self.channel_multipliers)
        self._check_divisible(
            self.downsampling_factor,
            f"the downsampling factor {self.downsampling_factor} (2 ** (len(CNNVQGAN."
            f"channel_multipliers) - 1), channel_multipliers={list(self.channel_multipliers)})",
            "the downsampling factor",
        )
        stack = dict(
            channels=self.channels,
            channel_multipliers=self.channel_multipliers,
            num_res_blocks=self.num_res_blocks,
            attention=self.attention,
            num_groups=self.num_groups,
        )
        self.encoder_width = self.decoder_width = self.channels * self.channel_multipliers[-1]
        self.encoder = CNNEncoder(self.image_size, name="encoder", **stack)
        self.grid_size = self.encoder.grid_size
        self._make_codebook(self.decoder_width)
        self.decoder = CNNDecoder(self.image_size, name="decoder", **stack)

    def model_info(self):
        """What a stage-2 prior needs to know about this tokenizer (written to the model dir)."""
        return dict(super().model_info(), downsampling_factor=self.downsampling_factor)

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            channel_multipliers=self.channel_multipliers,
            num_res_blocks=self.num_res_blocks,
            attention=self.attention,
            num_groups=self.num_groups,
        )
        return config
