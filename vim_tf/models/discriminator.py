"""StyleGAN2 residual discriminator (Karras et al. 2020), the stage-1 adversary.

Layout follows the StyleGAN2 "resnet" discriminator as in StyleGAN2-ADA: fromRGB at full resolution,
one residual block per halving of the resolution down to 4x4, then an epilogue with a minibatch
standard-deviation feature, a 3x3 conv and two dense layers. Channels at resolution `r` are
`min(channel_base // r, channel_max)`.

Downsampling is "blur, then strided conv" (StyleGAN2's `downsample_conv_2d`): the feature map is
padded, filtered with the normalized separable `blur_kernel` (a low-pass filter against aliasing),
then convolved with stride 2 and no further padding. The skip path blurs and keeps every other pixel
(StyleGAN2's `downsample_2d`, equal to a blurred average pool for `[1, 1]`) before its 1x1 conv.

Sub-layers are attributes (`block_0`, `block_1`, ...), never lists: TF checkpoints do not follow
Keras 3 layer lists.
"""

import math

import keras
import numpy as np
from keras import ops

_LRELU_SLOPE = 0.2
# sqrt(2) restores unit variance after a leaky ReLU of slope 0.2 (He et al.), as StyleGAN2 does.
_LRELU_GAIN = math.sqrt(2.0)
_ACTIVATIONS = (None, "lrelu")


def blur_kernel_2d(kernel):
    """Normalized 2-D blur filter from a 1-D separable kernel (or a 2-D kernel).

    Args:
        kernel: [K] or [K, K] sequence of non-negative numbers, e.g. `[1, 3, 3, 1]`.

    Returns:
        [K, K] float32 numpy array summing to 1, flipped so that a correlation (what conv ops
        compute) with it equals a true convolution with `kernel`.
    """
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim == 1:
        k = np.outer(k, k)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] < 2:
        raise ValueError(f"blur_kernel must have length >= 2 (or be square 2-D), got {kernel}")
    if np.any(k < 0) or k.sum() <= 0:
        raise ValueError(f"blur_kernel must be non-negative with a positive sum, got {kernel}")
    return (k / k.sum())[::-1, ::-1].astype(np.float32)


def _apply_activation(x, activation):
    if activation == "lrelu":
        return ops.leaky_relu(x, negative_slope=_LRELU_SLOPE) * _LRELU_GAIN
    return x


def _check_activation(activation):
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")


@keras.saving.register_keras_serializable(package="vim_tf")
class EqualizedConv2D(keras.layers.Layer):
    """2-D convolution with equalized learning rate (Karras et al. 2018).

    With `use_equalized_lr`, the kernel is stored N(0, 1) and multiplied by `1 / sqrt(fan_in)` at
    run time, so Adam's per-parameter step size acts on all layers alike; otherwise the kernel is
    stored N(0, 1 / fan_in) and used as is (same function at initialization). Biases start at zero.

    Args:
        filters: int > 0, output channels.
        kernel_size: int > 0, square kernel side.
        strides: int > 0.
        padding: "same" or "valid".
        use_bias: whether to add a bias.
        activation: None or "lrelu" (leaky ReLU 0.2 times sqrt(2)).
        use_equalized_lr: see above.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="same",
        use_bias=True,
        activation=None,
        use_equalized_lr=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        _check_activation(activation)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.padding = padding
        self.use_bias = use_bias
        self.activation = activation
        self.use_equalized_lr = use_equalized_lr

    def build(self, input_shape):
        fan_in = self.kernel_size * self.kernel_size * int(input_shape[-1])
        he_std = 1.0 / math.sqrt(fan_in)
        self.runtime_scale = he_std if self.use_equalized_lr else 1.0
        init_std = 1.0 if self.use_equalized_lr else he_std
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.kernel_size, self.kernel_size, int(input_shape[-1]), self.filters),
            initializer=keras.initializers.RandomNormal(stddev=init_std),
        )
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    @property
    def effective_kernel(self):
        """[k, k, C_in, C_out] the kernel the convolution actually uses."""
        return self.kernel * self.runtime_scale

    def call(self, x):
        """[B, H, W, C_in] -> [B, H', W', filters]."""
        y = ops.conv(
            x,
            self.effective_kernel,
            strides=self.strides,
            padding=self.padding,
            data_format="channels_last",
        )
        if self.use_bias:
            y = y + self.bias
        return _apply_activation(y, self.activation)

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        if self.padding == "same":
            h = None if h is None else -(-h // self.strides)
            w = None if w is None else -(-w // self.strides)
        else:
            h = None if h is None else (h - self.kernel_size) // self.strides + 1
            w = None if w is None else (w - self.kernel_size) // self.strides + 1
        return (b, h, w, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            use_bias=self.use_bias,
            activation=self.activation,
            use_equalized_lr=self.use_equalized_lr,
        )
        return config


@keras.saving.register_keras_serializable(package="vim_tf")
class EqualizedDense(keras.layers.Layer):
    """Dense layer with equalized learning rate; see `EqualizedConv2D`.

    Args:
        units: int > 0.
        use_bias: whether to add a bias.
        activation: None or "lrelu".
        use_equalized_lr: store N(0, 1) weights scaled by `1 / sqrt(fan_in)` at run time.
    """

    def __init__(self, units, use_bias=True, activation=None, use_equalized_lr=True, **kwargs):
        super().__init__(**kwargs)
        _check_activation(activation)
        self.units = int(units)
        self.use_bias = use_bias
        self.activation = activation
        self.use_equalized_lr = use_equalized_lr

    def build(self, input_shape):
        fan_in = int(input_shape[-1])
        he_std = 1.0 / math.sqrt(fan_in)
        self.runtime_scale = he_std if self.use_equalized_lr else 1.0
        init_std = 1.0 if self.use_equalized_lr else he_std
        self.kernel = self.add_weight(
            name="kernel",
            shape=(fan_in, self.units),
            initializer=keras.initializers.RandomNormal(stddev=init_std),
        )
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")

    @property
    def effective_kernel(self):
        """[C_in, units] the matrix the layer actually uses."""
        return self.kernel * self.runtime_scale

    def call(self, x):
        """[B, C_in] -> [B, units]."""
        y = ops.matmul(x, self.effective_kernel)
        if self.use_bias:
            y = y + self.bias
        return _apply_activation(y, self.activation)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units,
            use_bias=self.use_bias,
            activation=self.activation,
            use_equalized_lr=self.use_equalized_lr,
        )
        return config


@keras.saving.register_keras_serializable(package="vim_tf")
class Blur(keras.layers.Layer):
    """Zero-pads, filters each channel with a normalized blur kernel, keeps every `down`-th pixel.

    Has no weights: the filter is a constant.

    Args:
        kernel: 1-D separable kernel, e.g. `[1, 3, 3, 1]`, or a square 2-D one; normalized to sum 1.
        pad: (before, after) zero padding of both spatial axes, each >= 0.
        down: int >= 1, subsampling factor.
    """

    def __init__(self, kernel=(1, 3, 3, 1), pad=(0, 0), down=1, **kwargs):
        super().__init__(**kwargs)
        self.blur_kernel = np.asarray(kernel, dtype=np.float64).tolist()
        self._kernel_2d = blur_kernel_2d(kernel)
        if len(pad) != 2 or min(pad) < 0:
            raise ValueError(f"pad must be two non-negative ints, got {pad}")
        if down < 1:
            raise ValueError(f"down must be >= 1, got {down}")
        self.pad = (int(pad[0]), int(pad[1]))
        self.down = int(down)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self._depthwise_kernel = np.tile(self._kernel_2d[:, :, None, None], (1, 1, channels, 1))

    def call(self, x):
        """[B, H, W, C] -> [B, (H + pad - K) // down + 1, (same for W), C]."""
        if self.pad != (0, 0):
            x = ops.pad(x, [[0, 0], self.pad, self.pad, [0, 0]])
        kernel = ops.convert_to_tensor(self._depthwise_kernel, dtype=x.dtype)
        return ops.depthwise_conv(
            x, kernel, strides=self.down, padding="valid", data_format="channels_last"
        )

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        k = self._kernel_2d.shape[0]
        total = sum(self.pad)
        h = None if h is None else (h + total - k) // self.down + 1
        w = None if w is None else (w + total - k) // self.down + 1
        return (b, h, w, c)

    def get_config(self):
        config = super().get_config()
        config.update(kernel=list(self.blur_kernel), pad=list(self.pad), down=self.down)
        return config


@keras.saving.register_keras_serializable(package="vim_tf")
class MinibatchStdDev(keras.layers.Layer):
    """Appends the minibatch standard deviation as extra feature maps (StyleGAN2-ADA layout).

    The batch is split into groups of `G = min(group_size, B)` examples; example `i` belongs to
    group `i mod (B / G)` (strided, as in StyleGAN2). Channels are split into `num_channels` chunks.
    For each group and chunk the std-dev over the group's members is taken per pixel and channel,
    averaged over pixels and the chunk's channels, and broadcast as one [H, W] map to every member.

    `B` must be divisible by `G`. A batch size known when tracing that is not divisible raises
    ValueError; an unknown (dynamic) batch size that turns out not divisible fails at run time in
    the reshape. Use `drop_remainder=True` batches (or a batch size that is a multiple of
    `group_size`).

    Args:
        group_size: int >= 1.
        num_channels: int >= 1, must divide the input channels.
        epsilon: added to the variance before the square root.
    """

    def __init__(self, group_size=4, num_channels=1, epsilon=1e-8, **kwargs):
        super().__init__(**kwargs)
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {num_channels}")
        self.group_size = int(group_size)
        self.num_channels = int(num_channels)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        if channels % self.num_channels:
            raise ValueError(
                f"num_channels ({self.num_channels}) must divide the input channels ({channels})"
            )

    def call(self, x):
        """[B, H, W, C] -> [B, H, W, C + num_channels]."""
        batch = x.shape[0]
        _, h, w, c = x.shape
        if batch is not None:
            group = min(self.group_size, batch)
            if batch % group:
                raise ValueError(
                    f"MinibatchStdDev: batch size {batch} is not divisible by the group size "
                    f"{group} (min(group_size={self.group_size}, batch)); use a batch size that "
                    f"is a multiple of {group} or set mbstd_group_size to a divisor of it"
                )
        else:
            group = ops.minimum(self.group_size, ops.shape(x)[0])
        f = self.num_channels
        # float32 because the variance of nearly equal bfloat16 activations is mostly round-off.
        grouped = ops.reshape(ops.cast(x, "float32"), (group, -1, h, w, f, c // f))
        y = grouped - ops.mean(grouped, axis=0, keepdims=True)
        y = ops.sqrt(ops.mean(ops.square(y), axis=0, keepdims=True) + self.epsilon)
        stat = ops.mean(y, axis=(2, 3, 5), keepdims=True)  # [1, n, 1, 1, F, 1]
        # Broadcasting against zeros of the grouped shape avoids a tile by a dynamic group size.
        stat = ops.zeros_like(grouped[..., :1]) + stat  # [G, n, H, W, F, 1]
        stat = ops.reshape(stat, (-1, h, w, f))
        return ops.concatenate([x, ops.cast(stat, x.dtype)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] + self.num_channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            group_size=self.group_size, num_channels=self.num_channels, epsilon=self.epsilon
        )
        return config


@keras.saving.register_keras_serializable(package="vim_tf")
class DiscriminatorBlock(keras.layers.Layer):
    """Residual block halving the resolution: conv3x3, blur + stride-2 conv3x3, blurred 1x1 skip.

    Args:
        tmp_channels: channels of the first conv (StyleGAN2: the input channels).
        out_channels: channels of the output.
        blur_kernel: 1-D separable blur kernel.
        use_equalized_lr: see `EqualizedConv2D`.
    """

    def __init__(
        self, tmp_channels, out_channels, blur_kernel=(1, 3, 3, 1), use_equalized_lr=True, **kwargs
    ):
        super().__init__(**kwargs)
        self.tmp_channels = int(tmp_channels)
        self.out_channels = int(out_channels)
        self.blur_kernel = [float(v) for v in blur_kernel]
        self.use_equalized_lr = use_equalized_lr
        k = len(self.blur_kernel)
        # Padding of StyleGAN2's downsample_conv_2d (p = K - 2 + 3 - 1) and downsample_2d
        # (p = K - 2), split (ceil, floor), so that H -> H / 2 exactly on both paths.
        p_conv, p_skip = k, k - 2
        common = {"dtype": self.dtype_policy, "use_equalized_lr": use_equalized_lr}
        self.conv0 = EqualizedConv2D(
            self.tmp_channels, 3, activation="lrelu", name="conv0", **common
        )
        self.conv1_blur = Blur(
            self.blur_kernel, pad=((p_conv + 1) // 2, p_conv // 2), dtype=self.dtype_policy
        )
        self.conv1 = EqualizedConv2D(
            self.out_channels,
            3,
            strides=2,
            padding="valid",
            activation="lrelu",
            name="conv1",
            **common,
        )
        self.skip_blur = Blur(
            self.blur_kernel, pad=((p_skip + 1) // 2, p_skip // 2), down=2, dtype=self.dtype_policy
        )
        self.skip = EqualizedConv2D(self.out_channels, 1, use_bias=False, name="skip", **common)

    def build(self, input_shape):
        self.conv0.build(input_shape)
        shape = self.conv0.compute_output_shape(input_shape)
        self.conv1_blur.build(shape)
        self.conv1.build(self.conv1_blur.compute_output_shape(shape))
        self.skip_blur.build(input_shape)
        self.skip.build(self.skip_blur.compute_output_shape(input_shape))

    def call(self, x):
        """[B, H, W, C] -> [B, H / 2, W / 2, out_channels]."""
        y = self.conv1(self.conv1_blur(self.conv0(x)))
        skip = self.skip(self.skip_blur(x))
        # 1/sqrt(2) keeps the variance of the sum of two unit-variance paths at one.
        return (y + skip) * (1.0 / math.sqrt(2.0))

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        h = None if h is None else h // 2
        w = None if w is None else w // 2
        return (b, h, w, self.out_channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            tmp_channels=self.tmp_channels,
            out_channels=self.out_channels,
            blur_kernel=list(self.blur_kernel),
            use_equalized_lr=self.use_equalized_lr,
        )
        return config


@keras.saving.register_keras_serializable(package="vim_tf")
class StyleGANDiscriminator(keras.Model):
    """StyleGAN2 residual discriminator: images in [0, 1] -> one real/fake logit per image.

    Structure (channels `ch(r) = min(channel_base // r, channel_max)`):
    fromRGB (1x1 conv + lrelu) at `image_size` -> one `DiscriminatorBlock` per resolution
    `image_size, image_size / 2, ..., 8` (each halves it) -> at 4x4: `MinibatchStdDev` -> conv3x3 +
    lrelu -> flatten -> dense(ch(4)) + lrelu -> dense(1).

    Example, a tiny discriminator for 16x16 images (channels 16, 16, 16):

    ```python
    disc = StyleGANDiscriminator(image_size=16, channel_base=256, channel_max=16)
    logits = disc(tf.random.uniform([4, 16, 16, 3]))  # [4] float32
    ```

    In a gin file: `VQGANTraining.discriminator = {'channel_base': 32768, 'channel_max': 512}`
    (the training procedure builds it at its network's image size).

    Args:
        image_size: int, a power of 2 >= 8; input height and width.
        image_channels: int >= 1.
        channel_base: int; StyleGAN2-ADA's 32768 gives 512 channels up to 64x64 (with
            `channel_max=512`), 256 at 128x128, 128 at 256x256.
        channel_max: int >= 1.
        mbstd_group_size: int >= 1; the batch must be divisible by `min(mbstd_group_size, batch)`.
        mbstd_num_channels: int >= 1, must divide `ch(4)`.
        use_equalized_lr: N(0, 1) weights scaled by `1 / sqrt(fan_in)` at run time (else He init).
        blur_kernel: 1-D separable low-pass kernel used before every downsampling.
    """

    def __init__(
        self,
        image_size=256,
        image_channels=3,
        channel_base=32768,
        channel_max=512,
        mbstd_group_size=4,
        mbstd_num_channels=1,
        use_equalized_lr=True,
        blur_kernel=(1, 3, 3, 1),
        **kwargs,
    ):
        super().__init__(**kwargs)
        if image_size < 8 or image_size & (image_size - 1):
            raise ValueError(f"image_size must be a power of 2 >= 8, got {image_size}")
        if image_channels < 1:
            raise ValueError(f"image_channels must be >= 1, got {image_channels}")
        if channel_max < 1:
            raise ValueError(f"channel_max must be >= 1, got {channel_max}")
        if channel_base < image_size:
            raise ValueError(
                f"channel_base must be >= image_size ({image_size}) so that every resolution has "
                f">= 1 channel, got {channel_base}"
            )
        if np.ndim(blur_kernel) != 1:
            raise ValueError(f"blur_kernel must be a 1-D sequence, got {blur_kernel}")
        blur_kernel_2d(blur_kernel)  # validates length and sign
        self.image_size = int(image_size)
        self.image_channels = int(image_channels)
        self.channel_base = int(channel_base)
        self.channel_max = int(channel_max)
        self.mbstd_group_size = int(mbstd_group_size)
        self.mbstd_num_channels = int(mbstd_num_channels)
        self.use_equalized_lr = use_equalized_lr
        self.blur_kernel = [float(v) for v in blur_kernel]
        if self.channels_at(4) % self.mbstd_num_channels:
            raise ValueError(
                f"mbstd_num_channels must divide the 4x4 channels ({self.channels_at(4)}), "
                f"got {mbstd_num_channels}"
            )

        common = {"dtype": self.dtype_policy, "use_equalized_lr": use_equalized_lr}
        self.from_rgb = EqualizedConv2D(
            self.channels_at(self.image_size), 1, activation="lrelu", name="from_rgb", **common
        )
        self.num_blocks = int(math.log2(self.image_size)) - 2
        for i in range(self.num_blocks):
            res = self.image_size >> i
            block = DiscriminatorBlock(
                self.channels_at(res),
                self.channels_at(res // 2),
                blur_kernel=self.blur_kernel,
                name=f"block_{i}",
                **common,
            )
            setattr(self, f"block_{i}", block)
        self.mbstd = MinibatchStdDev(
            self.mbstd_group_size, self.mbstd_num_channels, name="mbstd", dtype=self.dtype_policy
        )
        ch4 = self.channels_at(4)
        self.epilogue_conv = EqualizedConv2D(
            ch4, 3, activation="lrelu", name="epilogue_conv", **common
        )
        self.epilogue_dense = EqualizedDense(
            ch4, activation="lrelu", name="epilogue_dense", **common
        )
        self.output_dense = EqualizedDense(1, name="output_dense", **common)

    def channels_at(self, resolution):
        """Number of feature channels at `resolution` (pixels per side)."""
        return min(self.channel_base // resolution, self.channel_max)

    def build(self, input_shape):
        _, h, w, c = input_shape
        if (h, w, c) != (self.image_size, self.image_size, self.image_channels):
            raise ValueError(
                f"StyleGANDiscriminator expects images [B, {self.image_size}, {self.image_size}, "
                f"{self.image_channels}], got shape {tuple(input_shape)}"
            )
        shape = tuple(input_shape)
        self.from_rgb.build(shape)
        shape = self.from_rgb.compute_output_shape(shape)
        for i in range(self.num_blocks):
            block = getattr(self, f"block_{i}")
            block.build(shape)
            shape = block.compute_output_shape(shape)
        self.mbstd.build(shape)
        shape = self.mbstd.compute_output_shape(shape)
        self.epilogue_conv.build(shape)
        ch4 = self.channels_at(4)
        self.epilogue_dense.build((shape[0], 16 * ch4))
        self.output_dense.build((shape[0], ch4))
        self.built = True

    def call(self, images):
        """Scores images.

        Args:
            images: [B, image_size, image_size, image_channels] float in [0, 1]. B must be divisible
                by `min(mbstd_group_size, B)`.

        Returns:
            [B] float32 logits (higher = more real).
        """
        x = images * 2.0 - 1.0
        x = self.from_rgb(x)
        for i in range(self.num_blocks):
            x = getattr(self, f"block_{i}")(x)
        x = self.mbstd(x)
        x = self.epilogue_conv(x)
        x = ops.reshape(x, (-1, 16 * self.channels_at(4)))
        x = self.epilogue_dense(x)
        logits = self.output_dense(x)
        return ops.cast(ops.reshape(logits, (-1,)), "float32")

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    def get_config(self):
        config = super().get_config()
        config.update(
            image_size=self.image_size,
            image_channels=self.image_channels,
            channel_base=self.channel_base,
            channel_max=self.channel_max,
            mbstd_group_size=self.mbstd_group_size,
            mbstd_num_channels=self.mbstd_num_channels,
            use_equalized_lr=self.use_equalized_lr,
            blur_kernel=list(self.blur_kernel),
        )
        return config
