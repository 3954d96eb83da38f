"""Tests for vim_tf.data.photos: the offline `embedded_photos` TFDS builder (the 'photos' dataset)."""

import glob
import os
import re
import shutil
import tempfile
from unittest import mock

import gin
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl.testing import parameterized
from PIL import Image

from network_guard import NetworkGuard
from testcase import TestCase
from vim_tf.config import gin_utils
from vim_tf.data import input_pipeline as ip
from vim_tf.data import photos

# Crops per photograph by hand: scales R/128 and R/64 of each side (rounded down), windows of R
# with stride R/4: count per axis = (L - R) // (R / 4) + 1. At R = 32 for astronaut (512 x 512):
# sides 128 and 256 -> 13 and 29 windows -> 13^2 + 29^2 = 1010.
HAND_COUNTS = {
    "astronaut": 13 * 13 + 29 * 29,
    "motorcycle_left": 20 * 12 + 43 * 28,  # 185 x 125 and 370 x 250
    "rocket": 17 * 10 + 37 * 23,  # 160 x 106 and 320 x 213
    "flower": 17 * 10 + 37 * 23,
    "chelsea": 11 * 6 + 25 * 15,  # 112 x 75 and 225 x 150
    "coffee": 15 * 9 + 34 * 22,  # 150 x 100 and 300 x 200
    "china": 17 * 10 + 37 * 23,
}


def raw_photo(name):
    """The photograph decoded straight from its package file, independently of the module."""
    (photo,) = [p for p in photos.PHOTOGRAPHS if p.name == name]
    root = os.path.dirname(__import__(photo.package).__file__)
    return np.asarray(Image.open(os.path.join(root, photo.path)).convert("RGB"))


def split_arrays(builder, split):
    ds = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    return ds["image"], ds["label"]


class PhotosTest(TestCase, parameterized.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.data_dir = tempfile.mkdtemp(prefix="photos_test_")
        with NetworkGuard() as guard:
            cls.builders = {r: photos.load_photos_builder(r, cls.data_dir) for r in (32, 64)}
        cls.network_attempts = guard.attempts
        cls.arrays = {
            (r, s): split_arrays(b, s) for r, b in cls.builders.items() for s in ("train", "test")
        }

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.data_dir, ignore_errors=True)
        super().tearDownClass()

    def test_prepare_is_offline(self):
        self.assertEmpty(self.network_attempts)
        for builder in self.builders.values():
            self.assertTrue(builder.is_prepared())

    @parameterized.parameters(32, 64)
    def test_split_sizes_match_hand_counts(self, r):
        info = self.builders[r].info
        for split in ("train", "test"):
            _, labels = self.arrays[(r, split)]
            per_photo = {
                photos.PHOTOGRAPHS[i].name: int(n) for i, n in enumerate(np.bincount(labels)) if n
            }
            expected = {p.name: HAND_COUNTS[p.name] for p in photos.photographs(split)}
            self.assertEqual(per_photo, expected)
            self.assertEqual(info.splits[split].num_examples, sum(expected.values()))
        self.assertEqual(photos.num_examples(r), {"train": 4496, "test": 2345})
        self.assertEqual(info.features["label"].num_classes, 7)

    def test_no_photograph_in_both_splits(self):
        train = {p.path for p in photos.photographs("train")}
        test = {p.path for p in photos.photographs("test")}
        self.assertEmpty(train & test)
        self.assertLen(train | test, len(photos.PHOTOGRAPHS))
        for r in (32, 64):
            train_labels = set(self.arrays[(r, "train")][1].tolist())
            test_labels = set(self.arrays[(r, "test")][1].tolist())
            self.assertEqual(train_labels, {0, 1, 2, 3})
            self.assertEqual(test_labels, {4, 5, 6})

    @parameterized.parameters(32, 64)
    def test_no_test_crop_equals_a_train_crop(self, r):
        # By pixel content, also catching a photograph that might ship twice under two names.
        train = {x.tobytes() for x in self.arrays[(r, "train")][0]}
        test = {x.tobytes() for x in self.arrays[(r, "test")][0]}
        self.assertEmpty(train & test)
        # Distinct test crops are many (the content check is not vacuous).
        self.assertGreater(len(test), 2000)

    @parameterized.parameters(32, 64)
    def test_shapes_dtypes(self, r):
        for split in ("train", "test"):
            images, labels = self.arrays[(r, split)]
            self.assertEqual(images.shape[1:], (r, r, 3))
            self.assertEqual(images.dtype, np.uint8)
            self.assertEqual(labels.dtype, np.int64)
        spec = self.builders[r].info.features["image"]
        self.assertEqual(spec.shape, (r, r, 3))

    def test_crops_equal_hand_crops_of_the_raw_photographs(self):
        raw = raw_photo("astronaut")  # 512 x 512: every grid starts at 0 with no margin
        images, _ = self.arrays[(64, "train")]
        # 64 px, second scale (factor 1): crops are the photograph's own pixels, stride 16.
        first_full = 13 * 13  # the first scale (256 x 256) has (256 - 64) // 16 + 1 = 13 per axis
        np.testing.assert_array_equal(images[first_full], raw[0:64, 0:64])
        np.testing.assert_array_equal(images[first_full + 1], raw[0:64, 16:80])
        np.testing.assert_array_equal(images[first_full + 29], raw[16:80, 0:64])
        # 32 px, first scale: the photograph resized to 128 x 128 (Lanczos), window (0, 8).
        small = np.asarray(Image.fromarray(raw).resize((128, 128), Image.Resampling.LANCZOS))
        images32, _ = self.arrays[(32, "train")]
        np.testing.assert_array_equal(images32[1], small[0:32, 8:40])
        # A crop is not one flat colour.
        self.assertGreater(images32[1].std(), 5.0)

    def test_centred_grid(self):
        # chelsea at 32 px, first scale: 112 wide -> 11 windows spanning 32 + 10 * 8 = 112 (no
        # margin); 75 high -> 6 windows spanning 72, margin (75 - 72) // 2 = 1.
        self.assertEqual(photos.grid_starts(112, 32), list(range(0, 81, 8)))
        self.assertEqual(photos.grid_starts(75, 32), [1, 9, 17, 25, 33, 41])
        self.assertEqual(photos.grid_starts(31, 32), [])

    def test_two_prepares_give_identical_bytes(self):
        other = tempfile.mkdtemp(prefix="photos_again_")
        try:
            again = photos.load_photos_builder(32, other)

            def records(builder):
                files = sorted(glob.glob(os.path.join(os.fspath(builder.data_path), "*.tfrecord*")))
                return {os.path.basename(f): open(f, "rb").read() for f in files}

            first, second = records(self.builders[32]), records(again)
            self.assertNotEmpty(first)
            self.assertEqual(first, second)
        finally:
            shutil.rmtree(other, ignore_errors=True)

    @parameterized.parameters(32, 64)
    def test_make_dataset_serves_photos(self, r):
        ds = ip.make_dataset("photos", "test", r, 16, training=False, data_dir=self.data_dir)
        batch = next(iter(ds))
        self.assertEqual(batch["image"].shape, (16, r, r, 3))
        self.assertEqual(batch["image"].dtype, tf.float32)
        self.assertEqual(batch["label"].dtype, tf.int32)
        images, labels = self.arrays[(r, "test")]
        # No resize at image_size == R: the eval pass gives the stored crops, in order.
        np.testing.assert_allclose(batch["image"].numpy(), images[:16] / 255.0, atol=1e-6)
        np.testing.assert_array_equal(batch["label"].numpy(), labels[:16])
        train = ip.make_dataset(
            "photos",
            "train",
            r,
            8,
            data_dir=self.data_dir,
            seed=0,
            random_flip=True,
            shuffle_buffer=16,
        )
        self.assertEqual(next(iter(train))["image"].shape, (8, r, r, 3))

    def test_dataset_name_and_info(self):
        self.assertEqual(ip.check_dataset_name("photos"), ("photos", None))
        self.assertEqual(
            ip.dataset_info("photos"),
            {"num_classes": 7, "num_examples": {"train": 4496, "test": 2345}},
        )

    @parameterized.parameters(48, 16, 0, "32", True, 32.0)
    def test_bad_resolution_names_valid_values(self, bad):
        message = f"image_size (resolution) 32 or 64 (configs 32px, 64px), got {bad!r}"
        with self.assertRaisesRegex(ValueError, re.escape(message)):
            photos.load_photos_builder(bad, self.data_dir)

    def test_bad_image_size_through_make_dataset(self):
        with self.assertRaisesRegex(ValueError, "32 or 64.*got 48"):
            ip.make_dataset("photos", "train", 48, 4, data_dir=self.data_dir)

    def test_missing_file_is_named(self):
        ghost = photos.Photograph("ghost", "skimage", "data/no_such_photo.png", "train")
        with self.assertRaisesRegex(
            FileNotFoundError, r"'ghost'.*no_such_photo\.png.*scikit-image"
        ):
            photos.photograph_path(ghost)
        with mock.patch("importlib.util.find_spec", return_value=None):
            with self.assertRaisesRegex(FileNotFoundError, "scikit-learn, which is not installed"):
                photos.photograph_path(photos.PHOTOGRAPHS[3])

    def test_gin_file(self):
        gin_utils.parse(["datasets/photos.gin"], ["IMAGE_SIZE = 32", "BATCH_SIZE = 8"])
        self.assertEqual(gin_utils.bound("make_dataset.dataset"), "photos")
        self.assertEqual(gin_utils.bound("make_dataset.image_size"), 32)
        self.assertIs(gin.query_parameter("make_dataset.random_flip"), True)
        self.assertIs(gin.query_parameter("make_dataset.cache"), True)
