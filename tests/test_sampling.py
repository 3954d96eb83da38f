"""Logit processing against numpy references."""

import numpy as np
import tensorflow as tf

from testcase import TestCase
from vim_tf.models import sampling


class SamplingTest(TestCase):
    def setUp(self):
        super().setUp()
        self.logits = tf.constant([[3.0, 1.0, 2.0, 0.0, -1.0], [0.0, 0.5, 4.0, 1.0, 0.2]])

    def test_top_k(self):
        out = sampling.apply_top_k(self.logits, 2).numpy()
        keep = out > sampling.NEG_INF / 2
        np.testing.assert_array_equal(keep, [[1, 0, 1, 0, 0], [0, 0, 1, 1, 0]])
        np.testing.assert_array_equal(sampling.apply_top_k(self.logits, 0), self.logits)

    def test_top_p(self):
        probs = tf.nn.softmax(self.logits).numpy()
        for p in (0.3, 0.7, 0.9, 0.999):
            out = sampling.apply_top_p(self.logits, p).numpy()
            keep = out > sampling.NEG_INF / 2
            for row, prob in zip(keep, probs):
                order = np.argsort(-prob)
                before = np.concatenate([[0.0], np.cumsum(prob[order])[:-1]])
                expected = np.zeros_like(row)
                expected[order[before < p]] = True
                np.testing.assert_array_equal(row, expected)
        np.testing.assert_array_equal(sampling.apply_top_p(self.logits, 1.0), self.logits)

    def test_temperature_and_guidance(self):
        out = sampling.process_logits(self.logits, 2.0, 0, 1.0)
        self.assertAllClose(out, self.logits / 2.0)
        cond, uncond = self.logits[:1], self.logits[1:]
        self.assertAllClose(sampling.guide(cond, uncond, 1.0), cond)
        self.assertAllClose(sampling.guide(cond, uncond, 3.0), uncond + 3.0 * (cond - uncond))

    def test_draw_is_seeded_and_follows_the_distribution(self):
        logits = tf.math.log(tf.constant([[0.7, 0.2, 0.1]] * 4000))
        a = sampling.draw(logits, 5, 3).numpy()
        self.assertAllEqual(a, sampling.draw(logits, 5, 3))
        self.assertNotAllEqual(a, sampling.draw(logits, 5, 4))
        freq = np.bincount(a, minlength=3) / a.size
        self.assertAllClose(freq, [0.7, 0.2, 0.1], atol=0.03)

    def test_counter_uniforms_are_uniform_and_independent(self):
        from scipy import stats

        u = sampling.uniform([200, 500], 11, 4).numpy().ravel()
        self.assertGreater(stats.kstest(u, "uniform").pvalue, 1e-3)
        other = sampling.uniform([200, 500], 11, 5).numpy().ravel()
        self.assertLess(abs(np.corrcoef(u, other)[0, 1]), 0.01)
        self.assertTrue(((u > 0) & (u < 1)).all())

    def test_argument_errors(self):
        with self.assertRaisesRegex(ValueError, "temperature must be > 0, got 0"):
            sampling.check_sampling_args(0, 0, 1.0, 1.0)
        with self.assertRaisesRegex(ValueError, "top_k must be an int >= 0"):
            sampling.check_sampling_args(1.0, -1, 1.0, 1.0)
        with self.assertRaisesRegex(ValueError, r"top_p must be in \(0, 1\]"):
            sampling.check_sampling_args(1.0, 0, 1.5, 1.0)


if __name__ == "__main__":
    tf.test.main()
