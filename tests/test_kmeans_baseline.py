"""Tests for vim_tf.reports.kmeans_baseline: the k-means patch-codebook baseline."""

import json
import math
import os

import numpy as np
from absl.testing import parameterized
from PIL import Image

from testcase import TestCase
from vim_tf.reports import kmeans_baseline as kb

PALETTE = np.array(
    [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.4, 1.0], [1.0, 1.0, 1.0]],
    np.float32,
)


def flat_patch_images(n, size, patch, rng, palette=PALETTE):
    """[n, size, size, 3] images whose patch x patch blocks are each one palette colour; every
    colour appears (the first blocks cycle through the palette)."""
    grid = size // patch
    choice = rng.integers(0, len(palette), size=(n, grid, grid))
    choice.reshape(-1)[: len(palette)] = np.arange(len(palette))
    blocks = palette[choice]  # [n, grid, grid, 3]
    return np.repeat(np.repeat(blocks, patch, axis=1), patch, axis=2), choice


def hand_psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b) ** 2, axis=(1, 2, 3))
    return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-10))


class KMeansBaselineTest(TestCase, parameterized.TestCase):
    @parameterized.parameters((32, 4, 512, 64 * 9), (16, 8, 16, 4 * 4), (32, 4, 100, None))
    def test_bits_per_image(self, size, patch, codes, expected):
        if expected is None:
            expected = 64 * math.log(100) / math.log(2)
        self.assertAlmostEqual(kb.bits_per_image(size, patch, codes), expected, places=9)

    def test_patches_round_trip_and_order(self):
        images = np.random.default_rng(0).random((2, 8, 12, 3), dtype=np.float32)
        patches = kb.to_patches(images, 4)
        self.assertEqual(patches.shape, (2 * 2 * 3, 48))
        np.testing.assert_array_equal(patches[0], images[0, 0:4, 0:4].reshape(-1))
        np.testing.assert_array_equal(patches[1], images[0, 0:4, 4:8].reshape(-1))
        np.testing.assert_array_equal(patches[3], images[0, 4:8, 0:4].reshape(-1))
        np.testing.assert_array_equal(patches[6], images[1, 0:4, 0:4].reshape(-1))
        np.testing.assert_array_equal(kb.from_patches(patches, (8, 12, 3), 4), images)

    def test_nearest_codes_match_brute_force(self):
        rng = np.random.default_rng(1)
        patches, centres = rng.random((300, 12)), rng.random((7, 12))
        brute = np.argmin(((patches[:, None] - centres[None]) ** 2).sum(-1), axis=1)
        np.testing.assert_array_equal(kb.nearest_codes(patches, centres, chunk=64), brute)

    def test_flat_patches_are_reconstructed_exactly(self):
        rng = np.random.default_rng(2)
        train, _ = flat_patch_images(6, 16, 4, rng)
        test, choice = flat_patch_images(3, 16, 4, rng)
        centres, n = kb.fit_codebook(train, 4, len(PALETTE), seed=0)
        self.assertEqual(n, 6 * 16)
        recs, codes = kb.reconstruct(test, centres, 4)
        np.testing.assert_allclose(recs, test, atol=1e-6)
        metrics = kb.score(test, recs, codes, len(PALETTE))
        self.assertAlmostEqual(metrics["psnr"], 100.0, places=3)  # MSE floored at 1e-10
        self.assertAlmostEqual(metrics["ssim"], 1.0, places=4)
        self.assertEqual(metrics["codebook_usage"], 1.0)
        # Perplexity by hand from the test's colour histogram (codes are a relabelling of it).
        p = np.bincount(choice.reshape(-1), minlength=len(PALETTE)) / choice.size
        self.assertAlmostEqual(metrics["perplexity"], np.exp(-np.sum(p * np.log(p))), places=4)

    def test_one_code_is_the_mean_patch(self):
        rng = np.random.default_rng(3)
        train = rng.random((5, 16, 16, 3), dtype=np.float32)
        test = rng.random((4, 16, 16, 3), dtype=np.float32)
        centres, _ = kb.fit_codebook(train, 4, 1)
        mean_patch = train.reshape(5, 4, 4, 4, 4, 3).mean(axis=(0, 1, 3))  # [4, 4, 3]
        np.testing.assert_allclose(centres[0], mean_patch.reshape(-1), atol=1e-6)
        recs, codes = kb.reconstruct(test, centres, 4)
        expected = np.tile(mean_patch, (4, 4, 1))
        np.testing.assert_allclose(recs, np.broadcast_to(expected, test.shape), atol=1e-6)
        metrics = kb.score(test, recs, codes, 1)
        self.assertAlmostEqual(metrics["psnr"], hand_psnr(test, recs).mean(), places=4)
        self.assertEqual(metrics["codebook_usage"], 1.0)
        self.assertAlmostEqual(metrics["perplexity"], 1.0, places=6)

    def test_subsample_is_bounded_and_seeded(self):
        rng = np.random.default_rng(4)
        train = rng.random((10, 8, 8, 3), dtype=np.float32)  # 40 patches
        a, n = kb.fit_codebook(train, 4, 3, seed=5, max_train_patches=20)
        b, _ = kb.fit_codebook(train, 4, 3, seed=5, max_train_patches=20)
        self.assertEqual(n, 20)
        np.testing.assert_array_equal(a, b)

    def test_run_writes_json_and_grid(self):
        root = self.get_temp_dir()
        rng = np.random.default_rng(6)
        for split, count in (("train", 6), ("test", 3)):
            images, _ = flat_patch_images(count, 16, 4, rng, palette=PALETTE[:3])
            os.makedirs(os.path.join(root, "data", split), exist_ok=True)
            for i, image in enumerate(images):
                path = os.path.join(root, "data", split, f"{i}.png")
                Image.fromarray((image * 255).astype(np.uint8)).save(path)
        output = os.path.join(root, "out", "kmeans.json")
        metrics = kb.run_kmeans_baseline(f"folder:{root}/data", 16, 4, 3, output, seed=0)
        with open(output) as f:
            written = json.load(f)
        self.assertEqual(written, metrics)
        self.assertEqual(
            set(written),
            {
                "method", "dataset", "split", "image_size", "patch_size", "codebook_size",
                "bits_per_image", "num_images", "num_train_images", "num_train_patches", "seed",
                "psnr", "ssim", "codebook_usage", "perplexity", "reconstruction_grid",
            },
        )  # fmt: skip
        self.assertAlmostEqual(written["bits_per_image"], 16 * math.log2(3))
        self.assertEqual((written["num_images"], written["num_train_images"]), (3, 6))
        self.assertEqual(written["num_train_patches"], 6 * 16)
        self.assertAlmostEqual(written["psnr"], 100.0, places=3)
        grid = os.path.join(root, "out", "kmeans_reconstructions.png")
        self.assertEqual(written["reconstruction_grid"], grid)
        # 3 inputs over 3 reconstructions, 16 px tiles with 2 px padding, drawn at twice the size.
        with Image.open(grid) as image:
            self.assertEqual(image.size, ((3 * 18 + 2) * 2, (2 * 18 + 2) * 2))

    @parameterized.parameters(
        (dict(patch_size=3), "patch_size 3 must divide image_size 32"),
        (dict(codebook_size=0), "codebook_size must be a positive int, got 0"),
        (dict(codebook_size=10, max_train_patches=5), "codebook_size 10 exceeds max_train"),
        (dict(image_size=8), "image_size must be at least 11.*got 8"),
    )
    def test_bad_arguments_are_named(self, bad, message):
        args = dict(image_size=32, patch_size=4, codebook_size=8, max_train_patches=100)
        args.update(bad)
        with self.assertRaisesRegex(ValueError, message):
            kb.run_kmeans_baseline("digits", output="/nonexistent/x.json", **args)

    def test_codebook_larger_than_train_patches(self):
        train = np.zeros((1, 8, 8, 3), np.float32)
        with self.assertRaisesRegex(ValueError, "codebook_size 5 exceeds the 4 train patches"):
            kb.fit_codebook(train, 4, 5)
