"""Classifier rejection sampling with a fake sampler and scoring network."""

import numpy as np

from testcase import TestCase
from vim_tf.sampling import rejection
from vim_tf.sampling.settings import SamplingSettings


class FakeSampler:
    """Image i of a call is a constant image of value (i + 1) / 100 (one pixel)."""

    def __init__(self):
        self.calls = []
        self.options = []

    def sample(self, class_ids, seed=0, settings=None, batch_size=100):
        self.calls.append(np.asarray(class_ids))
        self.options.append((seed, settings, batch_size))
        n = len(class_ids)
        images = ((np.arange(n) + 1) / 100.0).reshape(n, 1, 1, 1).repeat(3, -1)
        return np.arange(n).reshape(n, 1, 1), images.astype(np.float32)


class FakeNetwork:
    """Logits that make p(class 0) grow with the pixel value and p(class 1) shrink."""

    name = "fake"

    def activations(self, images, batch_size=250):
        v = images.reshape(len(images), -1)[:, 0].astype(np.float64)
        logits = np.stack([10 * v, -10 * v], axis=1)
        return logits, logits


class RejectionTest(TestCase):
    def test_keeps_the_most_probable_candidates_per_class(self):
        sampler = FakeSampler()
        plan = np.array([0, 0, 0, 1, 1, 1], np.int32)
        tokens, images, rate = rejection.rejection_sample(sampler, FakeNetwork(), plan, 0.5)
        # 6 candidates per class were drawn (12 in all); class 0 keeps the brightest of its
        # candidates 0..5, class 1 the darkest of its candidates 6..11.
        np.testing.assert_array_equal(sampler.calls[0], [0] * 6 + [1] * 6)
        self.assertEqual(sorted(tokens[:3].ravel()), [3, 4, 5])
        self.assertEqual(sorted(tokens[3:].ravel()), [6, 7, 8])
        self.assertAllClose(rate, 0.5)
        self.assertEqual(images.shape, (6, 1, 1, 3))

    def test_rate_one_draws_exactly_the_plan(self):
        sampler = FakeSampler()
        _, images, rate = rejection.rejection_sample(sampler, FakeNetwork(), [1, 0, 1], 1.0)
        self.assertEqual(rate, 1.0)
        self.assertLen(images, 3)

    def test_uneven_rate_reports_the_achieved_rate(self):
        _, images, rate = rejection.rejection_sample(FakeSampler(), FakeNetwork(), [0] * 5, 0.3)
        self.assertLen(images, 5)
        self.assertAllClose(rate, 5 / 17)  # ceil(5 / 0.3) = 17 candidates

    def test_seed_settings_and_batch_size_reach_the_sampler(self):
        sampler = FakeSampler()
        settings = SamplingSettings(top_k=3)
        rejection.rejection_sample(sampler, FakeNetwork(), [0, 1], 0.5, 9, 7, settings)
        self.assertEqual(sampler.options, [(9, settings, 7)])

    def test_bad_rate(self):
        with self.assertRaisesRegex(ValueError, r"acceptance_rate must be in \(0, 1\], got 0"):
            rejection.rejection_sample(FakeSampler(), FakeNetwork(), [0], 0)
