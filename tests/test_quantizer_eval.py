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


class _FakeLookup:
    """Encoder: the 2x2 area means of each channel as a 3-d vector per token; codebook lookup:
    those vectors as they are, code = index of the largest channel."""

    codebook_size = CODEBOOK

    def encoder(self, images, training=None):
        del training
        return tf.reshape(tf.image.resize(images, (2, 2), "area"), (-1, 4, 3))

    @property
    def codebook(self):
        return self

    def lookup(self, z):
        return z, tf.argmax(z, axis=-1, output_type=tf.int32)


class LookupGeometryTest(TestCase):
    def test_pairwise_cosine_against_all_pairs(self):
        rng = np.random.default_rng(1)
        v = rng.normal(size=(37, 5)) + np.array([2.0, 0, 0, 0, 0])
        u = v / np.linalg.norm(v, axis=1, keepdims=True)
        pairs = [u[i] @ u[j] for i in range(37) for j in range(i + 1, 37)]
        self.assertAllClose(quantizer_eval.mean_pairwise_cosine(v), np.mean(pairs), rtol=1e-10)
        self.assertAllClose(quantizer_eval.mean_pairwise_cosine(np.ones((4, 3))), 1.0)
        self.assertAllClose(quantizer_eval.mean_pairwise_cosine([[1.0, 0], [-1.0, 0]]), -1.0)
        with self.assertRaisesRegex(ValueError, "at least 2 vectors.*got 1"):
            quantizer_eval.mean_pairwise_cosine(np.ones((1, 3)))

    def test_usage_over_the_split_and_cosine_over_the_first_tokens(self):
        rng = np.random.default_rng(2)
        images = rng.uniform(size=(11, 8, 8, 3)).astype(np.float32)
        images[:, :, :, 2] *= 0.1  # channel 2 never wins: 3 of the 4 codes at most

        def dataset_fn(split, training, batch_size=None):
            del split, training, batch_size
            return tf.data.Dataset.from_tensor_slices({"image": images}).batch(4)

        g = quantizer_eval.lookup_geometry(_FakeLookup(), dataset_fn=dataset_fn, max_tokens=20)
        z = tf.reshape(tf.image.resize(images, (2, 2), "area"), (-1, 3)).numpy()
        used = np.unique(np.argmax(z, axis=-1))
        self.assertEqual(g["codebook_usage"], len(used) / CODEBOOK)
        counts = np.bincount(np.argmax(z, axis=-1), minlength=CODEBOOK) / len(z)
        entropy = -sum(p * np.log(p) for p in counts if p > 0)
        self.assertAllClose(g["perplexity"], np.exp(entropy), rtol=1e-5)
        # The first 20 tokens in split order (5 images: a batch of 4 and one of the next).
        u = z[:20] / np.linalg.norm(z[:20], axis=1, keepdims=True)
        pairs = [u[i] @ u[j] for i in range(20) for j in range(i + 1, 20)]
        self.assertAllClose(g["lookup_cosine"], np.mean(pairs), rtol=1e-6)
        self.assertEqual((g["num_tokens"], g["num_images"]), (20, 11))
