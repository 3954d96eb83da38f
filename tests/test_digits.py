"""Tests for vim_tf.data.digits: the offline `sklearn_digits` TFDS builder."""

import shutil
import tempfile
import threading

import numpy as np
import tensorflow_datasets as tfds
from absl.testing import parameterized
from sklearn.datasets import load_digits

from network_guard import NetworkGuard
from testcase import TestCase
from vim_tf.data import digits


def hand_images(resolution_8_values):
    """sklearn values 0..16 -> uint8 0..255, rounded half up, without any resize."""
    return np.floor(resolution_8_values * 255.0 / 16.0 + 0.5).astype(np.uint8)


class DigitsTest(TestCase, parameterized.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.data_dir = tempfile.mkdtemp(prefix="digits_test_")
        with NetworkGuard() as guard:
            cls.builder8 = digits.load_digits_builder(resolution=8, data_dir=cls.data_dir)
        cls.network_attempts = guard.attempts
        raw = load_digits()
        cls.values = raw.images  # [1797, 8, 8] float in 0..16
        cls.targets = raw.target

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.data_dir, ignore_errors=True)
        super().tearDownClass()

    def _split_arrays(self, builder, split):
        ds = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        return ds["image"], ds["label"]

    def test_prepare_is_offline(self):
        self.assertEmpty(self.network_attempts)
        self.assertTrue(self.builder8.is_prepared())

    def test_split_sizes_and_classes(self):
        info = self.builder8.info
        self.assertEqual(info.splits["train"].num_examples, 1437)
        self.assertEqual(info.splits["test"].num_examples, 360)
        self.assertEqual(info.features["label"].num_classes, 10)
        self.assertEqual(str(info.version), "1.0.0")
        self.assertIn("1.0.0", digits.SklearnDigits.RELEASE_NOTES)

    @parameterized.parameters("train", "test")
    def test_examples_equal_hand_computation_in_sklearn_order(self, split):
        images, labels = self._split_arrays(self.builder8, split)
        indices = [i for i in range(len(self.targets)) if (i % 5 == 0) == (split == "test")]
        self.assertEqual(images.shape, (len(indices), 8, 8, 3))
        self.assertEqual(images.dtype, np.uint8)
        np.testing.assert_array_equal(labels, self.targets[indices])
        expected = hand_images(self.values[indices])
        for c in range(3):
            np.testing.assert_array_equal(images[..., c], expected)

    def test_known_pixels_of_first_digit(self):
        # sklearn's first digit (a 0) starts with the row [0, 0, 5, 13, 9, 1, 0, 0].
        np.testing.assert_array_equal(self.values[0, 0], [0, 0, 5, 13, 9, 1, 0, 0])
        images, labels = self._split_arrays(self.builder8, "test")
        self.assertEqual(labels[0], 0)
        # 5 * 255 / 16 = 79.69 -> 80; 13 * 255 / 16 = 207.19 -> 207; 16 -> 255.
        np.testing.assert_array_equal(images[0, 0, :, 0], [0, 0, 80, 207, 143, 16, 0, 0])
        self.assertEqual(images.max(), 255)
        self.assertEqual(images.min(), 0)

    def test_upsampled_resolution_keeps_the_digit(self):
        builder = digits.load_digits_builder(resolution=16, data_dir=self.data_dir)
        self.assertEqual(builder.builder_config.name, "16px")
        images, labels = self._split_arrays(builder, "test")
        self.assertEqual(images.shape, (360, 16, 16, 3))
        np.testing.assert_array_equal(images[..., 0], images[..., 1])
        np.testing.assert_array_equal(images[..., 0], images[..., 2])
        np.testing.assert_array_equal(labels, self.targets[::5])
        # Bicubic upsampling keeps brightness and layout: 2x2 means follow the 8x8 source.
        hand = hand_images(self.values[::5]).astype(np.float64)
        pooled = images[..., 0].astype(np.float64).reshape(360, 8, 2, 8, 2).mean(axis=(2, 4))
        mean_gap = np.abs(pooled.mean(axis=(1, 2)) - hand.mean(axis=(1, 2)))
        self.assertLess(mean_gap.max(), 4.0)
        for k in range(0, 360, 37):
            self.assertGreater(np.corrcoef(pooled[k].ravel(), hand[k].ravel())[0, 1], 0.95)

    def test_configs(self):
        names = [c.name for c in digits.SklearnDigits.BUILDER_CONFIGS]
        self.assertEqual(names, ["16px", "32px", "64px"])
        self.assertEqual(digits.SklearnDigits.DEFAULT_CONFIG_NAME, "32px")
        self.assertEqual(digits.DigitsConfig(resolution=24).name, "24px")
        self.assertEqual(digits.DigitsConfig(resolution=24).resolution, 24)

    @parameterized.parameters(0, -3, 2.5, "32", True)
    def test_bad_resolution_is_named(self, bad):
        with self.assertRaisesRegex(ValueError, f"resolution must be a positive int, got {bad!r}"):
            digits.DigitsConfig(resolution=bad)
        with self.assertRaisesRegex(ValueError, "resolution must be a positive int"):
            digits.load_digits_builder(resolution=bad, data_dir=self.get_temp_dir())

    def test_concurrent_prepares_share_one_result(self):
        data_dir = self.get_temp_dir()
        results, errors = [], []

        def prepare():
            try:
                results.append(digits.load_digits_builder(resolution=6, data_dir=data_dir))
            except Exception as e:  # noqa: BLE001 - reported by the assertion below
                errors.append(e)

        with NetworkGuard() as guard:
            threads = [threading.Thread(target=prepare) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        self.assertEmpty(errors)
        self.assertEmpty(guard.attempts)
        self.assertLen(results, 2)
        self.assertEqual(results[0].data_path, results[1].data_path)
        for builder in results:
            self.assertEqual(builder.info.splits["test"].num_examples, 360)
        config_dir = results[0].data_path.parent
        self.assertEqual(sorted(p.name for p in config_dir.iterdir()), ["1.0.0"])

    def test_leftover_incomplete_dir_from_killed_prepare(self):
        data_dir = self.get_temp_dir()
        config = digits.SklearnDigits(config=digits.DigitsConfig(resolution=5), data_dir=data_dir)
        leftover = config.data_path.parent / "incomplete.KILLED_1.0.0"
        leftover.mkdir(parents=True)
        (leftover / "sklearn_digits-train.tfrecord-00000-of-00001").write_bytes(b"\x00" * 10)
        builder = digits.load_digits_builder(resolution=5, data_dir=data_dir)
        self.assertTrue(builder.is_prepared())
        self.assertFalse(leftover.exists())
        images, labels = self._split_arrays(builder, "test")
        self.assertEqual(images.shape, (360, 5, 5, 3))
        np.testing.assert_array_equal(labels, self.targets[::5])
        # A second call reuses the prepared data.
        again = digits.load_digits_builder(resolution=5, data_dir=data_dir)
        self.assertEqual(again.data_path, builder.data_path)

    def test_registered_name(self):
        builder = tfds.builder("sklearn_digits/8px", data_dir=self.data_dir)
        self.assertTrue(builder.is_prepared())
        self.assertEqual(builder.info.splits["test"].num_examples, 360)


if __name__ == "__main__":
    import absl.testing.absltest

    absl.testing.absltest.main()
