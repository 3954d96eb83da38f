"""The README's main job end to end on tiny bindings: every stage, then a rerun that reuses them."""

import json
import os

import numpy as np

from testcase import TestCase
from tiny import TINY_CLASSIFIER, TINY_VIM, TINY_VITVQGAN
from vim_tf import main_job

TRAIN_STAGES = {
    "train quantizer",
    "train classifier",
    "train prior",
    "train unconditional prior",
}


def _tiny_bindings(data_dir):
    # One set for every stage (the job passes its bindings to each train.py): later ones win, so
    # the shared macros are set last.
    return [
        *TINY_VITVQGAN,
        *TINY_CLASSIFIER,
        *TINY_VIM,
        "IMAGE_SIZE = 16",
        "BATCH_SIZE = 8",
        "TRAIN_STEPS = 4",
        "CHECKPOINT_EVERY = 2",
        "VQGANTraining.disc_start_step = 2",
        "train_probe.epochs = 2",
        f"make_dataset.data_dir = '{data_dir}'",
    ]


class MainJobTest(TestCase):
    def test_runs_every_stage_then_a_rerun_reuses_them(self):
        out = os.path.join(self.get_temp_dir(), "demo")
        bindings = _tiny_bindings(os.path.join(self.get_temp_dir(), "tfds"))
        first = main_job.run(out, bindings)

        self.assertEqual(first["quantizer"]["num_images"], 360)
        self.assertEqual(first["prior"]["num_samples"], 1000)
        self.assertEqual(first["prior"]["sampling"]["cfg_scale"], 1.0)
        self.assertEqual(first["prior_guided"]["sampling"]["cfg_scale"], main_job.CFG_SCALE)
        self.assertEqual(
            sorted(first["prior"]["class_accuracy_per_class"]), [str(i) for i in range(10)]
        )
        self.assertAllClose(first["prior_rejection"]["acceptance_rate"], 0.5)
        self.assertIn("top1", first["linear_probe"])
        grid = os.path.join(out, "samples", "grid.png")
        samples = np.load(os.path.join(out, "samples", "samples.npz"))
        np.testing.assert_array_equal(samples["class_ids"], np.repeat(np.arange(10), 10))
        self.assertTrue(os.path.exists(grid))
        for name in ("quantizer", "prior", "classifier"):
            self.assertTrue(
                os.path.exists(os.path.join(first["exports"][name], "saved_model.pb")), name
            )
        self.assertLessEqual(TRAIN_STAGES, set(first["stage_times"]))
        self.assertIn("encode tokens", first["stage_times"])
        self.assertIn("export prior", first["stage_times"])

        outputs = [
            os.path.join(out, "prior", "metrics.json"),
            os.path.join(out, "prior", f"metrics_cfg_{main_job.CFG_SCALE:g}.json"),
            os.path.join(out, "quantizer", "metrics.json"),
            grid,
        ]
        mtimes = [os.path.getmtime(p) for p in outputs]
        # The rerun only starts the trainers (each resumes at its final step and stops) and
        # reports the same figures from the kept outputs.
        again = main_job.run(out, bindings)
        self.assertEqual(set(again["stage_times"]), TRAIN_STAGES)
        self.assertEqual([os.path.getmtime(p) for p in outputs], mtimes)
        self.assertEqual(again["prior"], first["prior"])
        self.assertEqual(again["exports"], first["exports"])
        with open(os.path.join(out, "prior", "model_info.json")) as f:
            self.assertEqual(json.load(f)["train_steps"], 4)

        # A lost output is made again, and only it; the rejection run alone gives the figures
        # it gave beside the other two (they share the prior's statistics, not its samples).
        os.remove(os.path.join(out, "prior", "metrics_acceptance_0.5.json"))
        third = main_job.run(out, bindings)
        self.assertEqual(set(third["stage_times"]), TRAIN_STAGES | {"evaluate prior"})
        self.assertEqual([os.path.getmtime(p) for p in outputs], mtimes)
        self.assertEqual(third["prior_rejection"], first["prior_rejection"])

    def test_a_stage_that_fails_names_itself_and_its_cause(self):
        out = os.path.join(self.get_temp_dir(), "bad")
        with self.assertRaisesRegex(main_job.StageFailed, r"'train quantizer'.*vim-train"):
            main_job.run(out, ["TRAIN_STEPS = 'six'"])
        # The failed stage's own message comes through, and nothing after it ran.
        with self.assertRaisesRegex(main_job.StageFailed, "TRAIN_STEPS"):
            main_job.run(out, ["TRAIN_STEPS = 'six'"])
        self.assertFalse(os.path.exists(os.path.join(out, "classifier")))


PHOTOS_STAGES = {
    "train quantizer",
    "evaluate quantizer",
    "k-means baseline",
    "encode tokens",
    "train unconditional prior",
    "evaluate unconditional prior",
    "sample grid",
    "export quantizer",
    "export prior_uncond",
}


class PhotosMainJobTest(TestCase):
    def test_runs_the_photos_stages_then_a_rerun_reuses_them(self):
        out = os.path.join(self.get_temp_dir(), "photos")
        # The photos come at 32 px only (or 64): the tiny networks, at IMAGE_SIZE 32.
        bindings = [
            *TINY_VITVQGAN,
            *TINY_VIM,
            "IMAGE_SIZE = 32",
            "BATCH_SIZE = 8",
            "TRAIN_STEPS = 2",
            "CHECKPOINT_EVERY = 2",
            "VQGANTraining.disc_start_step = 10",
            f"make_dataset.data_dir = '{self.shared_data_dir()}'",
        ]
        first = main_job.run(out, bindings, dataset="photos")

        self.assertEqual(set(first["stage_times"]), PHOTOS_STAGES)
        # 2,345 test crops of chelsea, coffee and china (vim_tf/data/photos.py).
        self.assertEqual(first["quantizer"]["num_images"], 2345)
        self.assertEqual(first["prior_uncond"]["num_images"], 2345)
        # The baseline has the quantizer's rate: 64 patches of 4x4 at 16 codes = 64 x 4 bits.
        km = first["kmeans"]
        self.assertEqual((km["dataset"], km["image_size"], km["patch_size"]), ("photos", 32, 4))
        self.assertEqual((km["codebook_size"], km["bits_per_image"]), (16, 256))
        self.assertEqual(km["num_images"], 2345)
        self.assertTrue(os.path.exists(km["reconstruction_grid"]))
        self.assertTrue(os.path.exists(first["quantizer"]["reconstruction_grid"]))
        samples = np.load(os.path.join(out, "samples", "samples.npz"))
        self.assertEqual(samples["images"].shape, (main_job.NUM_GRID_SAMPLES, 32, 32, 3))
        self.assertEqual(samples["tokens"].shape, (main_job.NUM_GRID_SAMPLES, 8, 8))
        self.assertLess(int(samples["tokens"].max()), 16)
        # Unconditional: no class ids, no classifier, no class-conditional prior, no probe.
        self.assertNotIn("class_ids", samples.files)
        for absent in ("classifier", "prior", os.path.join("prior_uncond", "probe.json")):
            self.assertFalse(os.path.exists(os.path.join(out, absent)), absent)
        self.assertIn("linear probe", first["skipped"])
        self.assertEqual(sorted(first["exports"]), ["prior_uncond", "quantizer"])
        for path in first["exports"].values():
            self.assertTrue(os.path.exists(os.path.join(path, "saved_model.pb")), path)

        kept = [
            os.path.join(out, "kmeans", "metrics.json"),
            os.path.join(out, "prior_uncond", "metrics.json"),
            os.path.join(out, "samples", "grid.png"),
        ]
        mtimes = [os.path.getmtime(p) for p in kept]
        again = main_job.run(out, bindings, dataset="photos")
        self.assertEqual(
            set(again["stage_times"]), {"train quantizer", "train unconditional prior"}
        )
        self.assertEqual([os.path.getmtime(p) for p in kept], mtimes)
        self.assertEqual(again["kmeans"], km)

    def test_an_unknown_dataset_names_the_valid_ones_before_any_stage(self):
        out = os.path.join(self.get_temp_dir(), "unknown")
        with self.assertRaisesRegex(ValueError, r"'digits', 'photos', got 'cifar10'"):
            main_job.run(out, [], dataset="cifar10")
        self.assertFalse(os.path.exists(out))
