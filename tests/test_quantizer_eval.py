"""Quantizer evaluation over a split (vim_tf/eval/quantizer_eval.py) with a fake tokenizer and a
fake scoring network: every metric against a hand computation over the whole split."""

import numpy as np
import tensorflow as tf

from testcase import TestCase
from vim_tf.eval import quantizer_eval, scores

CODEBOOK = 4


class _FakeTokenizer:
    """Token of a 2x2 patch grid: 0..3 by brightness; reconstruction: the image dimmed by 0.9."""

    codebook_size = CODEBOOK

    def encode(self, images):
        means = tf.reduce_mean(tf.image.resize(images, (2, 2), "area"), -1)
        return tf.cast(tf.minimum(means * CODEBOOK, CODEBOOK - 1), tf.int32)

    def decode(self, tokens):
        return self._images * 0.9

    def __init__(self):
        self._images = None


class _FakeNetwork:
    name = "fake"

    def activations(self, images):
        x = np.asarray(images, np.float64).reshape(len(images), -1)
        features = np.stack([x.mean(1), x.std(1), x[:, 0]], 1)
        return features, features[:, :2]


class QuantizerEvalTest(TestCase):
    def test_metrics_and_rfid_over_uneven_batches(self):
        rng = np.random.default_rng(0)
        images = rng.uniform(size=(23, 16, 16, 3)).astype(np.float32)
        model = _FakeTokenizer()

        def dataset_fn(split, training, batch_size=None):
            del split, training, batch_size
            return tf.data.Dataset.from_tensor_slices({"image": images}).batch(5)

        # decode() sees the batch through encode's input: keep it for the fake reconstruction.
        encode = model.encode

        def remember(batch):
            model._images = batch
            return encode(batch)

        model.encode = remember
        m = quantizer_eval.evaluate_quantizer(model, dataset_fn=dataset_fn, network=_FakeNetwork())
        rec = images * 0.9
        mse = ((rec - images) ** 2).mean(axis=(1, 2, 3))
        self.assertEqual(m["num_images"], 23)
        self.assertAllClose(m["l2"], mse.mean(), rtol=1e-5)
        self.assertAllClose(m["l1"], np.abs(rec - images).mean(), rtol=1e-5)
        self.assertAllClose(m["psnr"], np.mean(10 * np.log10(1.0 / mse)), rtol=1e-4)
        # rFID streamed over 5 batches == the all-at-once Frechet distance of the whole split.
        net = _FakeNetwork()
        expected = scores.frechet_distance(net.activations(images)[0], net.activations(rec)[0])
        self.assertAllClose(m["rfid"], expected, rtol=1e-6, atol=1e-9)
        self.assertGreater(m["rfid"], 1e-4)
        self.assertEqual(m["classifier"], "fake")
