"""Training randomness (vim_tf/models/randomness.py): different on each replica, reproducible
from the seed, and the same statistics as Keras's own dropout."""

import os
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

from testcase import TestCase
from vim_tf.models.randomness import ReplicaDropout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ReplicaDropoutTest(TestCase):
    def test_inference_is_identity_and_training_keeps_expectation(self):
        layer = ReplicaDropout(0.25)
        x = tf.ones((200, 100))
        self.assertAllEqual(layer(x, training=False), x)
        y = layer(x, training=True).numpy()
        kept = y != 0
        # Kept units are scaled by 1 / (1 - rate); about 75% are kept (20,000 draws: the
        # binomial standard deviation of the fraction is 0.003).
        np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
        self.assertAllClose(kept.mean(), 0.75, atol=0.015)

    def test_successive_calls_draw_new_masks(self):
        layer = ReplicaDropout(0.5)
        x = tf.ones((16, 16))
        self.assertNotAllEqual(layer(x, training=True), layer(x, training=True))

    def test_noise_shape_shares_the_mask(self):
        layer = ReplicaDropout(0.5, noise_shape=(None, 1, 8))
        y = layer(tf.ones((4, 6, 8)), training=True).numpy()
        # One mask per (example, channel), broadcast over the middle axis.
        self.assertAllEqual(y, np.broadcast_to(y[:, :1], y.shape))

    def test_config_round_trip(self):
        layer = ReplicaDropout(0.3, noise_shape=(None, 1), seed=3, name="d")
        clone = ReplicaDropout.from_config(layer.get_config())
        self.assertEqual(clone.get_config(), layer.get_config())

    def test_reproducible_from_the_seed(self):
        x = tf.ones((32, 32))
        keras.utils.set_random_seed(11)
        a = ReplicaDropout(0.5)(x, training=True)
        keras.utils.set_random_seed(11)
        b = ReplicaDropout(0.5)(x, training=True)
        self.assertAllEqual(a, b)


class AcrossReplicasTest(TestCase):
    """tests/replica_randomness_check.py on a 2-replica MirroredStrategy."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.out_path = os.path.join(cls.class_temp_dir(), "randomness.npz")
        proc = subprocess.run(
            [
                sys.executable,
                os.path.join(REPO, "tests", "replica_randomness_check.py"),
                f"--output={cls.out_path}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, "\n".join(proc.stderr.splitlines()[-30:])
        with np.load(cls.out_path) as f:
            cls.out = dict(f)

    def _check(self, name):
        d = self.out
        first, second = d[f"{name}/run0/replica0"], d[f"{name}/run0/replica1"]
        # Replicas draw differently from the same input...
        self.assertNotAllEqual(first, second)
        # ... and a second run from the same seed draws exactly the same on each replica.
        self.assertAllEqual(first, d[f"{name}/run1/replica0"])
        self.assertAllEqual(second, d[f"{name}/run1/replica1"])
        return first, second

    def test_dropout_masks_differ_across_replicas(self):
        first, second = self._check("dropout")
        for mask in (first, second):
            self.assertAllClose((mask != 0).mean(), 0.5, atol=0.05)

    def test_class_dropout_differs_across_replicas(self):
        first, second = self._check("class_dropout")
        labels = np.arange(256) % 10
        for ids in (first, second):
            dropped = ids == 10  # the null class
            self.assertAllEqual(ids[~dropped], labels[~dropped])
            self.assertAllClose(dropped.mean(), 0.5, atol=0.1)

    def test_classifier_shifts_differ_across_replicas(self):
        first, second = self._check("shift")
        # Each shifted image still holds the one bright pixel, somewhere within 4 pixels.
        for images in (first, second):
            for image in images:
                ys, xs = np.nonzero(image[..., 0])
                self.assertEqual(len(ys), 1)
                self.assertLessEqual(abs(int(ys[0]) - 8), 4)
                self.assertLessEqual(abs(int(xs[0]) - 8), 4)
