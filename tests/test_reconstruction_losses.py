"""Tests for vim_tf.losses.reconstruction."""

import gin
import numpy as np
import scipy.special
import scipy.stats
import tensorflow as tf
from absl.testing import parameterized

from testcase import TestCase
from vim_tf.losses import reconstruction


def _random_batch(rng, shape=(2, 4, 4, 3)):
    targets = rng.uniform(0.0, 1.0, shape).astype(np.float32)
    loc = rng.normal(0.0, 2.0, shape).astype(np.float32)
    log_scale = rng.normal(0.0, 0.5, shape).astype(np.float32)
    return targets, loc, log_scale


def _scipy_nll(targets, loc, log_scale, eps):
    """-log f by the change of variables y = logit(x'): f_x(x') = f_y(logit(x')) / (x' (1 - x'))."""
    x = (1 - 2 * eps) * targets.astype(np.float64) + eps
    y = scipy.special.logit(x)
    log_density_y = scipy.stats.laplace.logpdf(y, loc=loc, scale=np.exp(log_scale))
    return -log_density_y + np.log(x * (1 - x))


class PixelMapTest(TestCase):
    def test_map_pixels_endpoints_and_inverse(self):
        x = np.array([0.0, 0.25, 0.5, 1.0], np.float32)
        mapped = reconstruction.map_pixels(x, eps=0.1)
        self.assertAllClose(mapped, [0.1, 0.3, 0.5, 0.9])
        self.assertAllClose(reconstruction.unmap_pixels(mapped, eps=0.1), x)

    def test_unmap_pixels_clips(self):
        self.assertAllClose(reconstruction.unmap_pixels([0.0, 0.05, 0.95, 1.0]), [0, 0, 1, 1])

    def test_bad_eps(self):
        with self.assertRaisesRegex(ValueError, r"eps must be in \(0, 0.5\), got 0.5"):
            reconstruction.map_pixels([0.5], eps=0.5)

    def test_logit_laplace_mean(self):
        loc = np.array([-3.0, 0.0, 0.7, 5.0], np.float32)
        expected = np.clip((scipy.special.expit(loc) - 0.1) / 0.8, 0, 1)
        self.assertAllClose(reconstruction.logit_laplace_mean(loc), expected)


class LogitLaplaceTest(TestCase, parameterized.TestCase):
    @parameterized.parameters(0.1, 0.05)
    def test_matches_scipy_laplace(self, eps):
        targets, loc, log_scale = _random_batch(np.random.default_rng(1))
        got = reconstruction.logit_laplace_loss(targets, loc, log_scale, eps=eps)
        self.assertEqual(got.dtype, tf.float32)
        self.assertAllClose(got, _scipy_nll(targets, loc, log_scale, eps).mean(), rtol=1e-5)

    def test_single_element_by_hand(self):
        # x = 0.5 -> x' = 0.5, logit = 0; mu = 1, b = e: |0 - 1| / e + log(2 e) + log(0.25).
        got = reconstruction.logit_laplace_loss([[[[0.5]]]], [[[[1.0]]]], [[[[1.0]]]])
        self.assertAllClose(got, 1 / np.e + np.log(2 * np.e) + np.log(0.25))

    def test_scale_term_is_learned_unlike_l1(self):
        # d/d(ln b) [|d| / b + ln b] = 0 at b = |d|: the optimal scale is the absolute logit error.
        target, mu = 0.3, 1.5
        d = abs(scipy.special.logit(0.8 * target + 0.1) - mu)
        log_scale = tf.Variable([[[[0.0]]]])
        with tf.GradientTape() as tape:
            loss = reconstruction.logit_laplace_loss([[[[target]]]], [[[[mu]]]], log_scale)
        self.assertAllClose(tape.gradient(loss, log_scale), [[[[1.0 - d]]]])
        at_optimum = reconstruction.logit_laplace_loss([[[[target]]]], [[[[mu]]]], np.log(d))
        self.assertLess(float(at_optimum), float(loss))

    @parameterized.parameters(tf.bfloat16, tf.float16)
    def test_half_precision_inputs_computed_in_float32(self, dtype):
        targets, loc, log_scale = _random_batch(np.random.default_rng(3))
        as_half = [tf.cast(v, dtype) for v in (targets, loc, log_scale)]
        got = reconstruction.logit_laplace_loss(*as_half)
        self.assertEqual(got.dtype, tf.float32)
        rounded = [tf.cast(v, tf.float32).numpy() for v in as_half]
        self.assertAllClose(got, _scipy_nll(*rounded, 0.1).mean(), rtol=1e-5)

    def test_gradient_wrt_loc_is_sign_correct(self):
        targets = np.full((1, 1, 1, 4), 0.5, np.float32)  # logit(x') = 0
        loc = tf.constant([[[[-2.0, -0.5, 0.5, 2.0]]]])
        log_scale = tf.zeros_like(loc)
        with tf.GradientTape() as tape:
            tape.watch(loc)
            loss = reconstruction.logit_laplace_loss(targets, loc, log_scale)
        grad = tape.gradient(loss, loc).numpy().ravel()
        # d/dmu |0 - mu| / b / N = sign(mu) / (b N): a gradient step moves mu towards logit(x').
        self.assertAllClose(grad, np.sign([-2.0, -0.5, 0.5, 2.0]) / 4.0)

    def test_minimum_over_loc_is_at_logit_of_mapped_pixel(self):
        target = 0.8
        optimum = scipy.special.logit(0.8 * target + 0.1)
        mus = np.linspace(optimum - 2, optimum + 2, 401).astype(np.float32)
        shape = (1, 1, 1, 1)
        values = [
            float(
                reconstruction.logit_laplace_loss(np.full(shape, target), np.full(shape, mu), 0.0)
            )
            for mu in mus
        ]
        self.assertAllClose(mus[int(np.argmin(values))], optimum, atol=0.011)

    def test_not_gin_configurable(self):
        # The model passes its own eps: a binding here would be ignored, so gin has no such name.
        with self.assertRaisesRegex(ValueError, "No configurable matching 'logit_laplace_loss'"):
            gin.parse_config("logit_laplace_loss.eps = 0.2")


class L2Test(TestCase):
    def test_values(self):
        a = np.array([[0.0, 1.0], [0.5, 0.25]], np.float32)
        b = np.array([[1.0, 1.0], [0.0, 0.75]], np.float32)
        self.assertAllClose(reconstruction.l2_loss(a, b), (1 + 0 + 0.25 + 0.25) / 4)

    def test_float32_output_for_bfloat16(self):
        a = tf.cast([0.0, 1.0], tf.bfloat16)
        self.assertEqual(reconstruction.l2_loss(a, a).dtype, tf.float32)


if __name__ == "__main__":
    tf.test.main()
