"""Scoring an export gives the same metrics as scoring its model dir."""

import os

import gin
import numpy as np
import tensorflow as tf

from testcase import TestCase
from tiny import TINY_CLASSIFIER, TINY_VIM, train_tiny_quantizer, with_data_dir
from vim_tf.eval import evaluator, saved_model_eval
from vim_tf.export import exporter
from vim_tf.models import loading
from vim_tf.sampling.sampler import Sampler
from vim_tf.sampling.settings import SamplingSettings
from vim_tf.training import train_lib


class SavedModelEvalTest(TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        root = cls.class_temp_dir()
        cls.data_dir = cls.shared_data_dir()
        cls.q_dir = os.path.join(root, "q")
        cls.c_dir = os.path.join(root, "c")
        cls.p_dir = os.path.join(root, "p")
        train_tiny_quantizer(cls.q_dir, cls.data_dir, steps=4)
        train_lib.run(
            cls.c_dir,
            ["gin/experiments/digits_classifier.gin"],
            with_data_dir(TINY_CLASSIFIER, cls.data_dir),
        )
        gin.clear_config()
        train_lib.run(
            cls.p_dir,
            ["gin/experiments/digits_vim.gin"],
            with_data_dir(TINY_VIM, cls.data_dir, "IMAGE_SIZE = 16"),
            quantizer_dir=cls.q_dir,
        )
        gin.clear_config()

    def _both(self, model_dir, **kw):
        gin.clear_config()
        direct = evaluator.evaluate(
            model_dir, os.path.join(self.get_temp_dir(), "d.json"), self.c_dir, **kw
        )
        gin.clear_config()
        path = exporter.export_model_dir(model_dir, os.path.join(self.get_temp_dir(), "export"))
        gin.clear_config()
        served = evaluator.evaluate_export(
            path, os.path.join(self.get_temp_dir(), "s.json"), self.c_dir, **kw
        )
        return direct, served

    def test_quantizer_export_scores_like_its_model_dir(self):
        direct, served = self._both(self.q_dir)
        for key in ("codebook_usage", "perplexity"):
            self.assertAllClose(served[key], direct[key], rtol=1e-6)
        # The export returns uint8 images: at most half a grey level from the float ones.
        self.assertAllClose(served["psnr"], direct["psnr"], atol=0.2)
        self.assertAllClose(served["l1"], direct["l1"], atol=2.0 / 255)
        self.assertAllClose(served["rfid"], direct["rfid"], rtol=0.05, atol=0.05)

    def test_prior_export_scores_like_its_model_dir(self):
        direct, served = self._both(self.p_dir, num_samples=20, acceptance_rate=0.5)
        self.assertEqual(served["num_samples"], direct["num_samples"])
        self.assertAllClose(served["acceptance_rate"], direct["acceptance_rate"])
        self.assertAllClose(served["class_accuracy"], direct["class_accuracy"], atol=0.051)
        self.assertAllClose(served["fid"], direct["fid"], rtol=0.05, atol=0.05)

    def test_served_batches_are_the_local_batches(self):
        # Every batch (not only the first) of a served run draws with the local batch's seed.
        gin.clear_config()
        path = exporter.export_model_dir(self.p_dir, os.path.join(self.get_temp_dir(), "sx"))
        gin.clear_config()
        model = loading.load_network(self.p_dir)[0]
        plan = np.array([0, 3, 3, 7, 9], np.int32)
        settings = SamplingSettings(top_k=4)
        local, _ = Sampler.of_trained_prior(model).sample(plan, 11, settings, batch_size=2)
        served = saved_model_eval.ServedSampler(
            tf.saved_model.load(path), saved_model_eval.read_export_info(path)
        )
        tokens, images = served.sample(plan, 11, settings, batch_size=2)
        np.testing.assert_array_equal(tokens, local)
        self.assertEqual(images.shape, (5, 16, 16, 3))

    def test_not_an_export(self):
        with self.assertRaisesRegex(ValueError, "not a vim_tf export version dir"):
            evaluator.evaluate_export(
                self.get_temp_dir(), os.path.join(self.get_temp_dir(), "x.json")
            )
