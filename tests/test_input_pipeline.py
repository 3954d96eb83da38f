"""Tests for vim_tf.data.input_pipeline: make_dataset, dataset_info, check_dataset_name."""

import os
import shutil
import tempfile

import gin
import numpy as np
import tensorflow as tf
from absl.testing import parameterized
from sklearn.datasets import load_digits

from network_guard import NetworkGuard
from testcase import TestCase
from vim_tf.data import digits
from vim_tf.data import input_pipeline as ip

GIN_FILE = os.path.join(os.path.dirname(__file__), "..", "gin", "datasets", "digits.gin")


def hand_images(values):
    """sklearn values 0..16 -> uint8 0..255, rounded half up, without any resize."""
    return np.floor(values * 255.0 / 16.0 + 0.5).astype(np.uint8)


def collect(ds):
    """All batches of a finite dataset as (images [N, s, s, 3], labels [N])."""
    images, labels = [], []
    for batch in ds:
        images.append(batch["image"].numpy())
        labels.append(batch["label"].numpy())
    return np.concatenate(images), np.concatenate(labels)


def as_rows(images, labels):
    """Sortable (label, pixel bytes) rows, to compare datasets as multisets."""
    return sorted((int(y), x.tobytes()) for x, y in zip(images, labels))


class InputPipelineTest(TestCase, parameterized.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.data_dir = tempfile.mkdtemp(prefix="input_pipeline_test_")
        digits.load_digits_builder(resolution=8, data_dir=cls.data_dir)
        digits.load_digits_builder(resolution=16, data_dir=cls.data_dir)
        raw = load_digits()
        cls.hand8 = hand_images(raw.images)  # [1797, 8, 8] uint8
        cls.targets = raw.target

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.data_dir, ignore_errors=True)
        super().tearDownClass()

    def _digits(self, **kwargs):
        args = dict(dataset="digits", split="train", image_size=8, batch_size=4)
        args.update(kwargs)
        return ip.make_dataset(data_dir=self.data_dir, **args)

    @parameterized.parameters(
        ("digits", ("digits", None)),
        ("tfds:mnist", ("tfds", "mnist")),
        ("tfds:cifar10/plain_text:3.0.2", ("tfds", "cifar10/plain_text:3.0.2")),
        ("folder:/data/photos", ("folder", "/data/photos")),
    )
    def test_check_dataset_name_accepts(self, name, expected):
        self.assertEqual(ip.check_dataset_name(name), expected)

    @parameterized.parameters("", "mnist", "Digits", "tfds:", "folder:", "gs://bucket/x", 3, None)
    def test_check_dataset_name_rejects(self, bad):
        with self.assertRaises(ValueError) as cm:
            ip.check_dataset_name(bad)
        message = str(cm.exception)
        self.assertIn(repr(bad), message)
        for form in ("'digits'", "'tfds:<name>[/<config>][:<version>]'", "'folder:<path>'"):
            self.assertIn(form, message)

    def test_network_namespaces_rejected(self):
        with self.assertRaisesRegex(ValueError, "namespaces.*'kaggle'"):
            ip.check_dataset_name("tfds:kaggle:some/data")

    def test_make_dataset_rejects_bad_name_early(self):
        with self.assertRaisesRegex(ValueError, "dataset must be 'digits'.*got 'imagenet'"):
            ip.make_dataset("imagenet", "train", 8, 4, data_dir=self.data_dir)

    @parameterized.parameters(
        dict(image_size=0), dict(batch_size=-1), dict(image_size=8.0), dict(shuffle_buffer=0)
    )
    def test_bad_sizes_are_named(self, **bad):
        ((name, value),) = bad.items()
        with self.assertRaisesRegex(ValueError, f"{name} must be a positive int, got {value!r}"):
            self._digits(**bad)

    def test_training_batches_shapes_dtypes_ranges(self):
        ds = self._digits(batch_size=5, seed=0)
        self.assertEqual(ds.element_spec["image"].shape.as_list(), [5, 8, 8, 3])
        self.assertEqual(ds.element_spec["image"].dtype, tf.float32)
        self.assertEqual(ds.element_spec["label"].shape.as_list(), [5])
        self.assertEqual(ds.element_spec["label"].dtype, tf.int32)
        hand = {x.tobytes(): int(y) for x, y in zip(self.hand8, self.targets)}
        for batch in ds.take(3):
            images = batch["image"].numpy()
            self.assertBetween(images.min(), 0.0, 1.0)
            self.assertBetween(images.max(), 0.0, 1.0)
            for image, label in zip(images, batch["label"].numpy()):
                # No resize at image_size == resolution: pixels are the hand values / 255 exactly.
                gray = np.rint(image[..., 0] * 255.0).astype(np.uint8)
                np.testing.assert_allclose(image[..., 0] * 255.0, gray, atol=1e-4)
                self.assertEqual(hand[gray.tobytes()], label)

    def test_eval_pass_covers_every_test_example_once(self):
        ds = self._digits(split="test", batch_size=64, training=False)
        images, labels = collect(ds)
        self.assertEqual(images.shape, (360, 8, 8, 3))  # the last, partial batch of 40 is kept
        gray = np.rint(images[..., 0] * 255.0).astype(np.uint8)
        # The eval pass keeps the stored (sklearn) order: test example k is sklearn example 5k.
        np.testing.assert_array_equal(gray, self.hand8[::5])
        np.testing.assert_array_equal(labels, self.targets[::5])

    def test_cache_gives_the_same_examples(self):
        plain = collect(self._digits(split="test", batch_size=100, training=False))
        cached = collect(self._digits(split="test", batch_size=100, training=False, cache=True))
        self.assertEqual(as_rows(*plain), as_rows(*cached))

    def test_one_training_epoch(self):
        ds = self._digits(batch_size=100, num_epochs=1, drop_remainder=False, seed=1)
        images, labels = collect(ds)
        self.assertLen(labels, 1437)
        train = np.array([i % 5 != 0 for i in range(len(self.targets))])
        gray = np.rint(images[..., 0] * 255.0).astype(np.uint8)
        self.assertEqual(as_rows(gray, labels), as_rows(self.hand8[train], self.targets[train]))
        # drop_remainder defaults to True in training: 1437 // 100 full batches.
        self.assertLen(list(self._digits(batch_size=100, num_epochs=1, seed=1)), 14)

    def test_same_seed_same_batches(self):
        kwargs = dict(
            dataset="tfds:sklearn_digits/16px",
            image_size=12,
            random_flip=True,
            deterministic=True,
            shuffle_buffer=200,  # a full-split buffer would decode all 1437 images three times
        )
        first = [b["image"].numpy() for b in self._digits(seed=7, **kwargs).take(4)]
        second = [b["image"].numpy() for b in self._digits(seed=7, **kwargs).take(4)]
        other = [b["image"].numpy() for b in self._digits(seed=8, **kwargs).take(4)]
        for a, b in zip(first, second):
            np.testing.assert_array_equal(a, b)
        self.assertFalse(all(np.array_equal(a, b) for a, b in zip(first, other)))
        self.assertEqual(first[0].shape, (4, 12, 12, 3))

    def test_deterministic_needs_a_seed(self):
        with self.assertRaisesRegex(ValueError, "deterministic=True needs a seed"):
            self._digits(deterministic=True)

    def test_random_flip_only_mirrors(self):
        base = collect(self._digits(split="test", batch_size=360, training=False))
        flipped = self._digits(split="test", batch_size=360, random_flip=True, seed=3, num_epochs=1)
        images, labels = collect(flipped)
        rows = set(as_rows(*base))
        mirrored = 0
        for image, label in zip(images, labels):
            if (int(label), image.tobytes()) in rows:
                continue
            self.assertIn((int(label), image[:, ::-1].copy().tobytes()), rows)
            mirrored += 1
        self.assertBetween(mirrored, 120, 240)  # about half of 360

    def test_input_context_splits_global_batch_and_examples(self):
        contexts = [
            tf.distribute.InputContext(
                num_input_pipelines=2, input_pipeline_id=i, num_replicas_in_sync=2
            )
            for i in range(2)
        ]
        train = self._digits(batch_size=8, seed=0, input_context=contexts[0])
        self.assertEqual(train.element_spec["image"].shape.as_list(), [4, 8, 8, 3])
        shards = [
            collect(self._digits(split="test", batch_size=8, training=False, input_context=c))
            for c in contexts
        ]
        rows = [as_rows(np.rint(x[..., 0] * 255).astype(np.uint8), y) for x, y in shards]
        self.assertEqual([len(r) for r in rows], [180, 180])
        self.assertEqual(sorted(rows[0] + rows[1]), as_rows(self.hand8[::5], self.targets[::5]))
        for batch in self._digits(
            split="test", batch_size=8, training=False, input_context=contexts[1]
        ).take(1):
            self.assertEqual(batch["image"].shape[0], 4)

    def test_tfds_prepared_dataset_and_info(self):
        info = ip.dataset_info("tfds:sklearn_digits/8px", data_dir=self.data_dir)
        self.assertEqual(info, {"num_classes": 10, "num_examples": {"train": 1437, "test": 360}})
        self.assertEqual(ip.dataset_info("digits"), info)
        images, labels = collect(
            self._digits(
                dataset="tfds:sklearn_digits/16px",
                split="test[:10]",
                image_size=8,
                batch_size=10,
                training=False,
            )
        )
        self.assertEqual(images.shape, (10, 8, 8, 3))
        np.testing.assert_array_equal(labels, self.targets[:50:5])

    def test_unprepared_tfds_dataset_explains_and_never_downloads(self):
        data_dir = self.get_temp_dir()
        with NetworkGuard() as guard:
            with self.assertRaises(ip.DatasetNotPreparedError) as cm:
                ip.make_dataset("tfds:mnist", "train", 8, 4, data_dir=data_dir)
            with self.assertRaises(ip.DatasetNotPreparedError):
                ip.dataset_info("tfds:mnist", data_dir=data_dir)
        self.assertEmpty(guard.attempts)
        message = str(cm.exception)
        self.assertIn("'mnist'", message)
        self.assertIn(f"tfds build mnist --data_dir={data_dir}", message)
        self.assertNotIn("manual_dir", message)
        self.assertEmpty(os.listdir(data_dir))  # nothing was written either

    def test_unprepared_imagenet_names_the_manual_tar_files(self):
        data_dir = self.get_temp_dir()
        with NetworkGuard():
            with self.assertRaises(ip.DatasetNotPreparedError) as cm:
                ip.make_dataset("tfds:imagenet2012", "train", 8, 4, data_dir=data_dir)
        message = str(cm.exception)
        manual = os.path.join(data_dir, "downloads", "manual")
        self.assertIn(f"--manual_dir={manual}", message)
        self.assertIn("ILSVRC2012_img_train.tar", message)
        self.assertIn("ILSVRC2012_img_val.tar", message)

    def test_unknown_tfds_dataset(self):
        with self.assertRaisesRegex(ValueError, "tfds:no_such_dataset_xyz.*unknown TFDS dataset"):
            ip.dataset_info("tfds:no_such_dataset_xyz", data_dir=self.get_temp_dir())

    def test_resize_shorter_side_and_center_crop(self):
        image = tf.constant(np.arange(6 * 10 * 3).reshape(6, 10, 3) % 251, tf.uint8)
        np.testing.assert_array_equal(ip.resize_shorter_side(image, 6), image)
        flat = tf.fill([6, 10, 3], tf.constant(77, tf.uint8))
        small = ip.resize_shorter_side(flat, 3)
        self.assertEqual(small.shape, (3, 5, 3))
        np.testing.assert_array_equal(small, np.full((3, 5, 3), 77))
        # Halving with antialiased bilinear = a triangle filter of radius 2 input pixels: along
        # [a, a, b, b] the first output (centre 0.5) weighs pixels 0, 1, 2 by 0.75, 0.75, 0.25.
        a, b = 0.0, 140.0
        row = np.array([a, a, b, b], np.uint8)
        halved = ip.resize_shorter_side(tf.constant(np.tile(row[None, :, None], (4, 1, 3))), 2)
        first = (0.75 * a + 0.75 * a + 0.25 * b) / 1.75
        second = (0.25 * a + 0.75 * b + 0.75 * b) / 1.75
        np.testing.assert_array_equal(halved[0, :, 0], np.rint([first, second]))
        crop = ip.center_crop(image, 4)
        np.testing.assert_array_equal(crop, image[1:5, 3:7])

    def test_grayscale_and_alpha_become_rgb(self):
        gray = ip._to_rgb_example({"image": tf.constant([[[7]], [[200]]], tf.uint8)}, False)
        np.testing.assert_array_equal(gray["image"], [[[7, 7, 7]], [[200, 200, 200]]])
        self.assertEqual(int(gray["label"]), 0)
        rgba = tf.constant([[[200, 100, 50, 128], [10, 20, 30, 0]]], tf.uint8)
        out = ip._to_rgb_example({"image": rgba, "label": tf.constant(3, tf.int64)}, True)
        # 200 * 128 / 255 = 100.4 -> 100, 100 * 128 / 255 = 50.2 -> 50, 50 * 128 / 255 -> 25.
        np.testing.assert_array_equal(out["image"], [[[100, 50, 25], [0, 0, 0]]])
        self.assertEqual(out["label"].dtype, tf.int32)

    def test_gin_file_binds_make_dataset(self):
        gin.parse_config_files_and_bindings(
            [GIN_FILE],
            ["IMAGE_SIZE = 8", "BATCH_SIZE = 6", f"make_dataset.data_dir = '{self.data_dir}'"],
        )
        self.assertEqual(gin.query_parameter("make_dataset.cache"), True)
        self.assertEqual(gin.query_parameter("make_dataset.random_flip"), False)
        self.assertEqual(gin.query_parameter("%DATASET"), "digits")
        batch = next(iter(ip.make_dataset(seed=0)))
        self.assertEqual(batch["image"].shape, (6, 8, 8, 3))
        self.assertEqual(batch["label"].shape, (6,))


if __name__ == "__main__":
    import absl.testing.absltest

    absl.testing.absltest.main()
