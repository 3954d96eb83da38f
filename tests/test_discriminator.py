"""Tests for vim_tf.models.discriminator.

Config and serialization round trips, checkpoint coverage, weight counts and the dtype policy of
every layer here are in test_layer_harness.py.
"""

import gin
import numpy as np
import scipy.signal
import tensorflow as tf
from absl.testing import parameterized

import tiny_configs
from testcase import TestCase
from vim_tf.losses.adversarial import r1_penalty
from vim_tf.models import discriminator as disc_lib
from vim_tf.models.discriminator import StyleGANDiscriminator

# ch(16) = 8, ch(8) = 16, ch(4) = min(32, 16) = 16.
TINY = tiny_configs.discriminator()


def _numpy_mbstd(x, group_size, num_channels, eps=1e-8):
    """Per-example loop over StyleGAN2-ADA's definition: example i is in group i mod (B / G)."""
    b, h, w, c = x.shape
    g = min(group_size, b)
    n = b // g
    chunk = c // num_channels
    out = np.zeros((b, h, w, num_channels), np.float64)
    for i in range(b):
        members = x[[j for j in range(b) if j % n == i % n]].astype(np.float64)
        std = np.sqrt(members.var(axis=0) + eps)  # population variance, [H, W, C]
        for f in range(num_channels):
            out[i, :, :, f] = std[:, :, f * chunk : (f + 1) * chunk].mean()
    return np.concatenate([x, out], axis=-1)


class BuildingBlocksTest(TestCase, parameterized.TestCase):
    def test_blur_kernel_normalized(self):
        k = disc_lib.blur_kernel_2d([1, 3, 3, 1])
        self.assertAllClose(k.sum(), 1.0)
        self.assertAllClose(k, np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0)

    @parameterized.parameters([[0]], [[1]], [[1, -1]], [[0, 0]])
    def test_blur_kernel_rejects(self, kernel):
        with self.assertRaisesRegex(ValueError, "blur_kernel must"):
            disc_lib.blur_kernel_2d(kernel)

    @parameterized.parameters(1, 2)
    def test_blur_keeps_constant_image_constant(self, down):
        x = np.full((1, 9, 9, 2), 0.7, np.float32)
        y = disc_lib.Blur([1, 3, 3, 1], pad=(0, 0), down=down)(x)
        self.assertAllClose(y, np.full(y.shape, 0.7))

    def test_blur_is_a_true_convolution(self):
        # An asymmetric kernel tells convolution from correlation.
        rng = np.random.default_rng(0)
        x = rng.normal(size=(1, 7, 7, 1)).astype(np.float32)
        k1 = np.array([1.0, 2.0, 4.0])
        y = disc_lib.Blur(k1, pad=(1, 1))(x)
        expected = scipy.signal.convolve2d(
            np.pad(x[0, :, :, 0], 1), np.outer(k1, k1) / 49.0, mode="valid"
        )
        self.assertAllClose(y[0, :, :, 0], expected, atol=1e-5)

    def test_equalized_conv_runtime_scaling(self):
        layer = disc_lib.EqualizedConv2D(4, 3, activation=None)
        x = np.random.default_rng(0).normal(size=(2, 5, 5, 6)).astype(np.float32)
        y = layer(x)
        fan_in = 3 * 3 * 6
        kernel = layer.kernel.numpy()
        self.assertAllClose(layer.effective_kernel, kernel / np.sqrt(fan_in))
        expected = tf.nn.conv2d(x, kernel / np.sqrt(fan_in), strides=1, padding="SAME")
        self.assertAllClose(y, expected, atol=1e-5)

    def test_equalized_init_is_unit_normal_and_zero_bias(self):
        layer = disc_lib.EqualizedConv2D(64, 3)
        layer.build((None, 8, 8, 64))
        self.assertAllClose(np.std(layer.kernel.numpy()), 1.0, atol=0.03)
        self.assertAllEqual(layer.bias.numpy(), np.zeros(64))
        plain = disc_lib.EqualizedConv2D(64, 3, use_equalized_lr=False)
        plain.build((None, 8, 8, 64))
        self.assertAllClose(np.std(plain.kernel.numpy()), 1 / np.sqrt(576), rtol=0.03)
        self.assertAllClose(plain.effective_kernel, plain.kernel)

    def test_equalized_dense_and_lrelu_gain(self):
        layer = disc_lib.EqualizedDense(3, activation="lrelu")
        x = np.random.default_rng(1).normal(size=(4, 5)).astype(np.float32)
        y = layer(x)
        pre = x @ (layer.kernel.numpy() / np.sqrt(5))
        self.assertAllClose(y, np.where(pre > 0, pre, 0.2 * pre) * np.sqrt(2), atol=1e-5)

    @parameterized.parameters((8, 4, 1), (8, 2, 2), (6, 8, 1), (4, 4, 4))
    def test_minibatch_stddev_matches_numpy(self, batch, group_size, num_channels):
        x = np.random.default_rng(2).normal(size=(batch, 3, 3, 4)).astype(np.float32)
        y = disc_lib.MinibatchStdDev(group_size, num_channels)(x)
        self.assertAllClose(y, _numpy_mbstd(x, group_size, num_channels), atol=1e-5)

    def test_minibatch_stddev_dynamic_batch(self):
        layer = disc_lib.MinibatchStdDev(4, 2)
        x = np.random.default_rng(3).normal(size=(8, 2, 2, 4)).astype(np.float32)
        fn = tf.function(layer, input_signature=[tf.TensorSpec([None, 2, 2, 4], tf.float32)])
        self.assertAllClose(fn(x), _numpy_mbstd(x, 4, 2), atol=1e-5)

    def test_minibatch_stddev_indivisible_batch(self):
        with self.assertRaisesRegex(
            ValueError, "batch size 6 is not divisible by the group size 4"
        ):
            disc_lib.MinibatchStdDev(4)(np.zeros((6, 2, 2, 4), np.float32))

    def test_block_halves_resolution(self):
        block = disc_lib.DiscriminatorBlock(4, 8)
        self.assertEqual(block(np.zeros((2, 8, 8, 4), np.float32)).shape, (2, 4, 4, 8))


class StyleGANDiscriminatorTest(TestCase, parameterized.TestCase):
    def setUp(self):
        super().setUp()
        self.images = np.random.default_rng(0).uniform(size=(4, 16, 16, 3)).astype(np.float32)

    def test_output_shape_and_dtype(self):
        logits = StyleGANDiscriminator(**TINY)(self.images)
        self.assertEqual(logits.shape, (4,))
        self.assertEqual(logits.dtype, tf.float32)
        self.assertTrue(np.all(np.isfinite(logits)))

    @parameterized.parameters((256, 128), (128, 256), (64, 512), (4, 512))
    def test_channels(self, resolution, channels):
        disc = StyleGANDiscriminator(image_size=256)
        self.assertEqual(disc.channels_at(resolution), channels)

    def test_parameter_count(self):
        disc = StyleGANDiscriminator(**TINY)
        disc.build((None, 16, 16, 3))
        from_rgb = 3 * 8 + 8
        block_16 = (9 * 8 * 8 + 8) + (9 * 8 * 16 + 16) + 8 * 16  # conv0, down conv1, skip
        block_8 = (9 * 16 * 16 + 16) + (9 * 16 * 16 + 16) + 16 * 16
        epilogue = (9 * 17 * 16 + 16) + (16 * 16 * 16 + 16) + (16 + 1)  # conv (+mbstd), 2 dense
        self.assertEqual(disc.count_params(), from_rgb + block_16 + block_8 + epilogue)

    def test_blur_kernel_round_trips_through_config(self):
        # The harness covers the default kernel; a 3-tap kernel changes every block's padding.
        disc = StyleGANDiscriminator(**TINY, mbstd_group_size=2, blur_kernel=[1, 2, 1])
        expected = disc(self.images)
        clone = StyleGANDiscriminator.from_config(disc.get_config())
        clone.build((None, 16, 16, 3))
        clone.set_weights(disc.get_weights())
        self.assertAllClose(clone(self.images), expected)

    def test_gradient_reaches_input_and_r1_backprops_to_weights(self):
        disc = StyleGANDiscriminator(**TINY)
        images = tf.constant(self.images)
        with tf.GradientTape() as tape:
            r1 = r1_penalty(disc, images)
        self.assertGreater(float(r1), 0.0)
        grads = tape.gradient(r1, disc.trainable_variables)
        for var, grad in zip(disc.trainable_variables, grads, strict=True):
            if var.path.endswith("kernel"):
                self.assertIsNotNone(grad, msg=var.path)
                self.assertGreater(float(tf.reduce_max(tf.abs(grad))), 0.0, msg=var.path)

    def test_batch_size_one_and_tf_function(self):
        disc = StyleGANDiscriminator(**TINY)
        eager = disc(self.images)
        fn = tf.function(disc, input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32)])
        self.assertAllClose(fn(self.images), eager, atol=1e-5)
        self.assertEqual(disc(self.images[:1]).shape, (1,))

    def test_mixed_precision_gives_float32_logits(self):
        disc = StyleGANDiscriminator(**TINY, dtype="mixed_bfloat16")
        logits = disc(self.images)
        self.assertEqual(logits.dtype, tf.float32)
        self.assertEqual(disc.block_0.conv0.compute_dtype, "bfloat16")

    def test_not_gin_registered(self):
        # The stage-1 model builds its discriminator from its own arguments: a binding of the
        # class would be ignored, so gin does not know it.
        with self.assertRaisesRegex(ValueError, "No configurable matching 'StyleGANDiscriminator'"):
            gin.parse_config("StyleGANDiscriminator.channel_base = 64")

    @parameterized.parameters(4, 12, 0)
    def test_bad_image_size(self, size):
        with self.assertRaisesRegex(ValueError, f"power of 2 >= 8, got {size}"):
            StyleGANDiscriminator(image_size=size)

    @parameterized.named_parameters(
        ("channel_base", {"channel_base": 8}, "channel_base must be >= image_size"),
        (
            "mbstd_channels",
            {"mbstd_num_channels": 3},
            r"mbstd_num_channels must divide .*\(16\), got 3",
        ),
    )
    def test_bad_channel_base_and_mbstd_channels(self, overrides, message):
        with self.assertRaisesRegex(ValueError, message):
            StyleGANDiscriminator(**{**TINY, **overrides})

    def test_wrong_input_shape(self):
        with self.assertRaisesRegex(ValueError, r"expects images \[B, 16, 16, 3\]"):
            StyleGANDiscriminator(**TINY)(np.zeros((4, 8, 8, 3), np.float32))


if __name__ == "__main__":
    tf.test.main()
