"""End to end on a tiny config: train, files in the model dir, resume, evaluate, tool errors."""

import glob
import json
import os
from unittest import mock

import gin
import numpy as np
import tensorflow as tf

from testcase import TestCase
from tiny import tiny_vitvqgan_bindings
from vim_tf.config import gin_utils
from vim_tf.eval import evaluator
from vim_tf.models import loading
from vim_tf.training import train_lib, trainer
from vim_tf.utils import model_dir as model_dir_lib

EXPERIMENT = "gin/experiments/digits_vitvqgan.gin"


class TrainerTest(TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.data_dir = os.path.join(tf.compat.v1.test.get_temp_dir(), "tfds")

    def _train(self, model_dir, *extra):
        gin.clear_config()
        return train_lib.run(model_dir, [EXPERIMENT], tiny_vitvqgan_bindings(self.data_dir, *extra))

    def test_train_resume_and_evaluate(self):
        model_dir = os.path.join(self.get_temp_dir(), "q")
        model = self._train(model_dir)
        self.assertEqual(int(model.step), 6)
        # Two phases ran: the discriminator trained from step 3 on.
        self.assertEqual(int(model.discriminator_optimizer.iterations), 3)
        for name in (
            "config.gin",
            "operative_config.gin",
            "command.txt",
            "model_info.json",
            "reconstructions.png",
            "checkpoint",
            "ckpt-3.index",
            "ckpt-6.index",
        ):
            self.assertTrue(os.path.exists(os.path.join(model_dir, name)), name)
        self.assertNotEmpty(glob.glob(os.path.join(model_dir, "events.out.tfevents.*")))
        self.assertIn(
            "ViTVQGAN.codebook_size = 16",
            open(os.path.join(model_dir, "operative_config.gin")).read(),
        )
        tags = set()
        for f in glob.glob(os.path.join(model_dir, "events.out.tfevents.*")):
            for event in tf.compat.v1.train.summary_iterator(f):
                tags.update(v.tag for v in event.summary.value)
        for tag in (
            "train/l2",
            "train/logit_laplace",
            "train/vq",
            "train/psnr",
            "train/batch_codebook_usage",
            "train/batch_perplexity",
            "train/discriminator_loss",
            "train/generator_adversarial",
            "images/reconstructions",
        ):
            self.assertIn(tag, tags)
        weights = [w.numpy() for w in model.weights]

        # Same command again: nothing to do, the weights are the checkpoint's.
        with mock.patch.object(trainer.logging, "info") as info:
            again = self._train(model_dir)
        logs = [call.args[0] % call.args[1:] for call in info.call_args_list]
        self.assertTrue(any("resumed from" in r and "at step 6" in r for r in logs), logs)
        self.assertEqual(int(again.step), 6)
        for a, b in zip(weights, again.weights):
            np.testing.assert_array_equal(a, b.numpy())

        # Longer schedule: continues from step 6 (not from 0) to 9.
        with mock.patch.object(trainer.logging, "info") as info:
            longer = self._train(model_dir, "TRAIN_STEPS = 9")
        logs = [call.args[0] % call.args[1:] for call in info.call_args_list]
        self.assertTrue(any("from step 6 to 9" in r for r in logs), logs)
        self.assertEqual(int(longer.step), 9)
        self.assertTrue(os.path.exists(os.path.join(model_dir, "ckpt-9.index")))

        # Evaluate: fields, and values recomputed independently from the restored model.
        gin.clear_config()
        out = os.path.join(self.get_temp_dir(), "metrics.json")
        metrics = evaluator.evaluate(model_dir, out)
        saved = json.load(open(out))
        for key in ("psnr", "ssim", "l1", "l2", "codebook_usage", "perplexity"):
            self.assertIn(key, saved)
            self.assertAllClose(saved[key], metrics[key])
        self.assertEqual(saved["num_images"], 360)
        self.assertEqual(saved["step"], 9)
        model, _, _ = loading.load_network(model_dir)
        from vim_tf.data import input_pipeline

        images = np.concatenate(
            [b["image"].numpy() for b in input_pipeline.make_dataset(split="test", training=False)]
        )
        rec = model.reconstruct(images).numpy()
        mse = ((rec - images) ** 2).mean(axis=(1, 2, 3))
        self.assertAllClose(saved["psnr"], np.mean(10 * np.log10(1 / mse)), rtol=1e-4)
        self.assertAllClose(saved["l1"], np.abs(rec - images).mean(), rtol=1e-4)
        codes = model.encode(images).numpy()
        self.assertAllClose(saved["codebook_usage"], len(np.unique(codes)) / 16)
        p = np.bincount(codes.ravel(), minlength=16) / codes.size
        self.assertAllClose(
            saved["perplexity"], np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()), rtol=1e-4
        )
        self.assertTrue(os.path.exists(saved["reconstruction_grid"]))

    def test_jit_compile_except_adversarial_compiles_the_autoencoder_phase_only(self):
        with mock.patch.object(trainer.logging, "info") as info:
            model = self._train(
                os.path.join(self.get_temp_dir(), "mixed"),
                "train.jit_compile = 'except_adversarial'",
            )
        logs = [call.args[0] % call.args[1:] for call in info.call_args_list]
        phases = [r for r in logs if r.startswith("train step from")]
        self.assertEqual(
            phases,
            ["train step from step 0: XLA-compiled", "train step from step 3: graph mode (no XLA)"],
        )
        self.assertEqual(int(model.step), 6)
        self.assertEqual(int(model.discriminator_optimizer.iterations), 3)

    def test_bad_jit_compile_is_named(self):
        with self.assertRaisesRegex(
            ValueError,
            r"train.jit_compile must be one of \[False, True, 'except_adversarial'\], got 'yes'",
        ):
            self._train(os.path.join(self.get_temp_dir(), "x"), "train.jit_compile = 'yes'")

    def test_watch_scores_every_checkpoint_until_the_last(self):
        from vim_tf.eval import watcher

        model_dir = os.path.join(self.get_temp_dir(), "watched")
        self._train(model_dir)
        gin.clear_config()
        out_dir = os.path.join(self.get_temp_dir(), "watch_out")
        history = watcher.watch(model_dir, out_dir, poll_seconds=0.1, timeout_seconds=30)
        self.assertEqual([m["step"] for m in history], [3, 6])
        saved = json.load(open(os.path.join(model_dir, watcher.HISTORY_JSON)))
        self.assertEqual([m["step"] for m in saved], [3, 6])
        self.assertAllClose(
            saved[1]["psnr"], json.load(open(os.path.join(out_dir, "eval-6.json")))["psnr"]
        )
        rows = open(os.path.join(model_dir, watcher.HISTORY_CSV)).read().splitlines()
        self.assertLen(rows, 3)
        self.assertNotEmpty(glob.glob(os.path.join(out_dir, "eval", "events.out.tfevents.*")))

    def test_unknown_gin_parameter_is_named(self):
        with self.assertRaisesRegex(ValueError, "codebok_size"):
            self._train(os.path.join(self.get_temp_dir(), "x"), "ViTVQGAN.codebok_size = 3")

    def test_missing_gin_file_is_named(self):
        with self.assertRaisesRegex(ValueError, "gin file not found: 'nope.gin'"):
            train_lib.run(self.get_temp_dir(), ["nope.gin"])

    def test_bad_dataset_is_named(self):
        with self.assertRaisesRegex(ValueError, "'imagenett'"):
            self._train(os.path.join(self.get_temp_dir(), "x"), "DATASET = 'imagenett'")

    def test_missing_tfds_dataset_says_how_to_prepare(self):
        with self.assertRaisesRegex(FileNotFoundError, "tfds build"):
            self._train(os.path.join(self.get_temp_dir(), "x"), "DATASET = 'tfds:mnist'")

    def test_tools_on_wrong_dirs(self):
        empty = self.get_temp_dir()
        with self.assertRaisesRegex(ValueError, "not a trained vim_tf model dir"):
            evaluator.evaluate(empty, os.path.join(empty, "m.json"))
        with self.assertRaisesRegex(ValueError, "--gin_file is required for a new model dir"):
            train_lib.run(os.path.join(empty, "new"))

    def test_model_dir_without_checkpoint(self):
        model_dir = os.path.join(self.get_temp_dir(), "nockpt")
        os.makedirs(model_dir)
        model_dir_lib.write_model_info(model_dir, {"kind": "quantizer"})
        gin_utils.register_configurables()
        gin.parse_config_files_and_bindings([EXPERIMENT], tiny_vitvqgan_bindings(self.data_dir))
        gin_utils.save_config(model_dir)
        gin.clear_config()
        with self.assertRaisesRegex(ValueError, "no checkpoint in"):
            evaluator.evaluate(model_dir, os.path.join(model_dir, "m.json"))


if __name__ == "__main__":
    tf.test.main()
