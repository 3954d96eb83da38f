"""Tests for vim_tf.losses.adversarial."""

import gin
import numpy as np
import tensorflow as tf

from testcase import TestCase
from vim_tf.losses import adversarial

REAL = np.array([2.0, -1.0, 0.5, 0.0], np.float32)
FAKE = np.array([-3.0, 0.25, 1.5, -0.5], np.float32)


@gin.configurable
def _loss_user(fn=gin.REQUIRED):
    return fn(FAKE)


def _softplus(x):
    return np.log1p(np.exp(x))


class LossValueTest(TestCase):
    def test_non_saturating_generator(self):
        expected = np.mean(-np.log(1 / (1 + np.exp(-FAKE))))  # -log sigmoid(fake)
        self.assertAllClose(adversarial.non_saturating_generator_loss(FAKE), expected)

    def test_non_saturating_discriminator(self):
        expected = np.mean(_softplus(-REAL)) + np.mean(_softplus(FAKE))
        got = adversarial.non_saturating_discriminator_loss(REAL, FAKE)
        self.assertAllClose(got, expected)

    def test_non_saturating_discriminator_at_zero_logits_is_2_log_2(self):
        zeros = np.zeros(3, np.float32)
        got = adversarial.non_saturating_discriminator_loss(zeros, zeros)
        self.assertAllClose(got, 2 * np.log(2.0))

    def test_hinge_generator(self):
        self.assertAllClose(adversarial.hinge_generator_loss(FAKE), -(-3 + 0.25 + 1.5 - 0.5) / 4)

    def test_hinge_discriminator(self):
        # relu(1 - real) = [0, 2, 0.5, 1]; relu(1 + fake) = [0, 1.25, 2.5, 0.5].
        got = adversarial.hinge_discriminator_loss(REAL, FAKE)
        self.assertAllClose(got, 3.5 / 4 + 4.25 / 4)

    def test_float32_from_bfloat16(self):
        got = adversarial.hinge_discriminator_loss(
            tf.cast(REAL, tf.bfloat16), tf.cast(FAKE, tf.bfloat16)
        )
        self.assertEqual(got.dtype, tf.float32)
        self.assertAllClose(got, 3.5 / 4 + 4.25 / 4)

    def test_gin_selects_loss(self):
        gin.parse_config("_loss_user.fn = @hinge_generator_loss")
        self.assertAllClose(_loss_user(), adversarial.hinge_generator_loss(FAKE))

    def test_losses_have_no_gin_parameters(self):
        # The model passes every argument: a binding could never take effect, so gin refuses it.
        with self.assertRaisesRegex(ValueError, "denylisted kwarg 'fake_logits'"):
            gin.parse_config("hinge_generator_loss.fake_logits = 1.0")
        with self.assertRaisesRegex(ValueError, "No configurable matching 'r1_penalty'"):
            gin.parse_config("r1_penalty.real_images = 1.0")


class R1PenaltyTest(TestCase):
    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(0)
        self.w = rng.normal(size=(1, 3, 3, 2)).astype(np.float32)
        self.images = rng.uniform(size=(4, 3, 3, 2)).astype(np.float32)

    def test_linear_discriminator(self):
        w = tf.constant(self.w)

        def disc(x):
            return tf.reduce_sum(w * x, axis=[1, 2, 3])

        self.assertAllClose(adversarial.r1_penalty(disc, self.images), np.sum(self.w**2))

    def test_quadratic_discriminator(self):
        a = tf.constant(self.w)

        def disc(x):
            return tf.reduce_sum(a * tf.square(x), axis=[1, 2, 3])[:, None]  # [B, 1] is fine too

        grads = 2 * self.w * self.images  # per example
        expected = np.mean(np.sum(grads**2, axis=(1, 2, 3)))
        self.assertAllClose(adversarial.r1_penalty(disc, self.images), expected)

    def test_double_backprop_under_tf_function(self):
        w = tf.Variable(self.w)

        def disc(x):
            return tf.reduce_sum(w * x, axis=[1, 2, 3])

        @tf.function
        def penalty_and_grad(images):
            with tf.GradientTape() as tape:
                r1 = adversarial.r1_penalty(disc, images)
            return r1, tape.gradient(r1, w)

        r1, grad = penalty_and_grad(tf.constant(self.images))
        self.assertAllClose(r1, np.sum(self.w**2))
        self.assertAllClose(grad, 2 * self.w)  # d ||w||^2 / dw

    def test_bfloat16_discriminator_gives_float32(self):
        w = tf.constant(self.w)

        def disc(x):
            return tf.cast(tf.reduce_sum(w * x, axis=[1, 2, 3]), tf.bfloat16)

        r1 = adversarial.r1_penalty(disc, tf.cast(self.images, tf.bfloat16))
        self.assertEqual(r1.dtype, tf.float32)
        self.assertAllClose(r1, np.sum(self.w**2), rtol=1e-5)

    def test_constant_discriminator_raises(self):
        with self.assertRaisesRegex(ValueError, "does not depend on its input"):
            adversarial.r1_penalty(lambda x: tf.zeros([4]), self.images)


if __name__ == "__main__":
    tf.test.main()
