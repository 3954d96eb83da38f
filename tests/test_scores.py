"""scores: FID / IS / KID against independent numpy-scipy computations, class accuracy, and the
scoring-network wrappers (Keras model, SavedModel)."""

import math
import os

import numpy as np
import scipy.linalg
import tensorflow as tf
from absl.testing import parameterized

from testcase import TestCase
from vim_tf.eval import scores
from vim_tf.models.classifier import ImageClassifier


def scipy_fid(a, b):
    m1, m2 = a.mean(0), b.mean(0)
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean))


def numpy_is(logits):
    logits = np.asarray(logits, np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    py = p.mean(0, keepdims=True)
    kl = (p * (np.log(p) - np.log(py))).sum(1)
    return float(np.exp(kl.mean()))


def numpy_mmd2(x, y):
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 over all samples (one block)."""
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m, n = len(x), len(y)
    return (
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )


def block_sizes(n, n_blocks):
    """TF-GAN's split: n // n_blocks each, the last n % n_blocks blocks one larger."""
    v = n // n_blocks
    extra = n - v * n_blocks
    return [v] * (n_blocks - extra) + [v + 1] * extra


def mean_pool_network(num_classes=3, name="mean_pool_test"):
    """Features = per-channel mean and std; logits = a fixed linear map of the features."""
    w = np.random.default_rng(1).normal(size=(6, num_classes)).astype(np.float32)

    def fn(images):
        f = tf.concat([tf.reduce_mean(images, [1, 2]), tf.math.reduce_std(images, [1, 2])], -1)
        return {"features": f, "logits": tf.matmul(f, w) * 5.0}

    return scores.ScoringNetwork(fn, name)


CLASS_LOGITS = np.array([[3.0, 0.0, 1.0], [0.0, 2.0, 1.0], [0.0, 1.0, 5.0], [1.0, 0.0, 0.0]])


class ScoresTest(TestCase, parameterized.TestCase):
    def setUp(self):
        super().setUp()
        self.rng = np.random.default_rng(0)

    def test_fid_matches_scipy(self):
        a = self.rng.normal(size=(200, 6))
        b = self.rng.normal(size=(150, 6)) * 1.5 + 0.4
        b[:, 0] += b[:, 1]  # correlated, so sqrtm is not just elementwise
        fid = scores.frechet_distance(a.astype(np.float32), b)
        ref = scipy_fid(a.astype(np.float32).astype(np.float64), b)
        self.assertIsInstance(fid, float)
        self.assertGreater(ref, 1.0)
        self.assertLess(abs(fid - ref) / ref, 1e-4)

    def test_fid_identical_sets_is_zero(self):
        a = self.rng.normal(size=(100, 5))
        self.assertLess(abs(scores.frechet_distance(a, a.copy())), 1e-6)

    @parameterized.named_parameters(
        ("different_widths", (10, 5), r"same width.*\(10, 4\).*\(10, 5\)"),
        ("not_2d", (10,), r"fake_activations.*\(10,\)"),
    )
    def test_fid_rejects_bad_shapes(self, fake_shape, message):
        with self.assertRaisesRegex(ValueError, message):
            scores.frechet_distance(np.zeros((10, 4)), np.zeros(fake_shape))

    def test_inception_score_matches_hand_computation(self):
        logits = self.rng.normal(size=(12, 4)) * 2
        self.assertAllClose(scores.inception_score(logits), numpy_is(logits), rtol=1e-10)
        mean, std = scores.inception_score_with_std(logits, num_splits=2)
        halves = [numpy_is(logits[:6]), numpy_is(logits[6:])]
        self.assertAllClose(mean, np.mean(halves), rtol=1e-10)
        self.assertAllClose(std, np.std(halves), rtol=1e-8)
        self.assertAllClose(scores.inception_score(logits, num_splits=2), mean)
        self.assertEqual(scores.inception_score_with_std(logits)[1], 0.0)

    @parameterized.named_parameters(
        # Every p(y|x) equal: 1.
        ("uniform", np.zeros((8, 5)), 1.0),
        ("same_for_every_image", np.tile([[1.0, 3.0, 0.0]], (6, 1)), 1.0),
        # Confident and every class equally often: the number of classes.
        ("confident_5_classes", np.eye(5) * 100.0, 5.0),
        ("confident_4_classes_thrice", np.tile(np.eye(4), (3, 1)) * 100.0, 4.0),
    )
    def test_inception_score_extremes(self, logits, expected):
        self.assertAllClose(scores.inception_score(logits), expected, rtol=1e-6, atol=1e-12)

    def test_inception_score_rejects_bad_splits(self):
        with self.assertRaisesRegex(ValueError, r"num_splits must be in \[1, 4\].*got 5"):
            scores.inception_score(np.zeros((4, 3)), num_splits=5)

    def test_kid_single_block_is_exact_unbiased_mmd(self):
        x = self.rng.normal(size=(50, 8))
        y = self.rng.normal(size=(40, 8)) + 0.5
        kid, std = scores.kernel_distance(x, y)
        self.assertAllClose(kid, numpy_mmd2(x, y), rtol=1e-10)
        self.assertTrue(math.isnan(std))
        # Same distribution: the unbiased estimate is near 0 (and may be negative).
        kid_same, _ = scores.kernel_distance(x[:25], x[25:])
        self.assertLess(abs(kid_same), 0.2 * kid)

    def test_kid_blocks_match_tfgan_split(self):
        x = self.rng.normal(size=(50, 8))
        y = self.rng.normal(size=(41, 8)) + 0.3
        kid, std = scores.kernel_distance(x, y, max_block_size=20)
        n_blocks = 3  # ceil(50 / 20)
        xs = np.split(x, np.cumsum(block_sizes(50, n_blocks))[:-1])
        ys = np.split(y, np.cumsum(block_sizes(41, n_blocks))[:-1])
        ests = np.array([numpy_mmd2(a, b) for a, b in zip(xs, ys)])
        self.assertAllClose(kid, ests.mean(), rtol=1e-10)
        self.assertAllClose(std, np.sqrt(ests.var(ddof=1) / n_blocks), rtol=1e-8)

    @parameterized.named_parameters(
        ("three_right", [0, 1, 2, 2], 0.75), ("none_right", np.array([1, 0, 0, 1]), 0.0)
    )
    def test_class_accuracy(self, class_ids, expected):
        self.assertAllClose(scores.class_accuracy(CLASS_LOGITS, class_ids), expected)

    @parameterized.named_parameters(
        ("id_out_of_range", [0, 1, 3, 2], r"\[0, 3\).*\[3\]"),
        ("wrong_count", [0, 1, 2], r"class_ids \[N\].*\(3,\)"),
    )
    def test_class_accuracy_rejects(self, class_ids, message):
        with self.assertRaisesRegex(ValueError, message):
            scores.class_accuracy(CLASS_LOGITS, class_ids)

    def test_activations_batches_and_checks_range(self):
        network = mean_pool_network()
        images = self.rng.uniform(size=(7, 4, 4, 3)).astype(np.float32)
        features, logits = network.activations(images, batch_size=3)
        ref = network.fn(tf.constant(images))
        self.assertEqual(features.dtype, np.float64)
        self.assertEqual((features.shape, logits.shape), ((7, 6), (7, 3)))
        self.assertAllClose(features, ref["features"], atol=1e-6)
        self.assertAllClose(logits, ref["logits"], atol=1e-5)
        with self.assertRaisesRegex(ValueError, r"\[0, 1\].*\[-0.99"):
            network.activations(images * 2 - 1)
        with self.assertRaisesRegex(ValueError, r"\(7, 4, 4\)"):
            network.activations(images[..., 0])

    def test_score_samples(self):
        network = mean_pool_network(name="digits_classifier:/tmp/c")
        fake = self.rng.uniform(size=(30, 4, 4, 3)).astype(np.float32)
        real = self.rng.uniform(size=(20, 4, 4, 3)).astype(np.float32) ** 2
        class_ids = self.rng.integers(0, 3, size=30)
        got = scores.score_samples(network, fake, real, class_ids=class_ids, batch_size=16)
        ff, fl = network.activations(fake)
        rf, _ = network.activations(real)
        self.assertEqual(got["classifier"], "digits_classifier:/tmp/c")
        self.assertEqual((got["num_samples"], got["num_real_samples"]), (30, 20))
        self.assertAllClose(got["fid"], scipy_fid(rf, ff), rtol=1e-4)
        self.assertAllClose(got["inception_score"], numpy_is(fl), rtol=1e-8)
        self.assertAllClose(got["kid"], numpy_mmd2(rf, ff), rtol=1e-8)
        self.assertIsNone(got["kid_std"])  # one block: undefined, and JSON has no NaN
        self.assertAllClose(got["class_accuracy"], np.mean(fl.argmax(1) == class_ids))
        only_fake = scores.score_samples(network, fake)
        self.assertEqual(
            set(only_fake), {"classifier", "num_samples", "inception_score"}, msg=only_fake
        )

    def test_from_keras_image_classifier(self):
        model = ImageClassifier(image_size=8, num_classes=3, channels=(4,), feature_dim=5)
        model.build()
        network = scores.ScoringNetwork.from_keras(model, name="digits_classifier:test")
        self.assertEqual(network.image_size, (8, 8))
        images = self.rng.uniform(size=(5, 8, 8, 3)).astype(np.float32)
        features, logits = network.activations(images, batch_size=2)
        self.assertEqual((features.shape, logits.shape), ((5, 5), (5, 3)))
        self.assertAllClose(features, model.features(images), atol=1e-5)
        self.assertAllClose(logits, model(images, training=False), atol=1e-5)
        # Other sizes are resized (bilinear) to the model's size.
        big = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)
        _, big_logits = network.activations(big)
        resized = tf.image.resize(big, (8, 8), method="bilinear")
        self.assertAllClose(big_logits, model(resized, training=False), atol=1e-5)

    def test_from_keras_requires_features(self):
        import keras

        with self.assertRaisesRegex(TypeError, "Sequential has no features"):
            scores.ScoringNetwork.from_keras(keras.Sequential([keras.layers.Dense(2)]), "x")

    def test_from_saved_model(self):
        class Scorer(tf.Module):
            def __init__(self):
                super().__init__()
                self.w = tf.Variable(np.random.default_rng(2).normal(size=(3, 4)), dtype=tf.float32)

            @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
            def scores(self, images):
                f = tf.reduce_mean(images, axis=[1, 2])
                return {"features": f, "logits": tf.matmul(f, self.w)}

        module = Scorer()
        path = os.path.join(self.get_temp_dir(), "scorer")
        tf.saved_model.save(module, path, signatures={"scores": module.scores})
        network = scores.ScoringNetwork.from_saved_model(path)
        self.assertEqual(network.name, f"saved_model:{os.path.abspath(path)}")
        self.assertEqual(network.image_size, (8, 8))
        images = self.rng.uniform(size=(5, 16, 16, 3)).astype(np.float32)
        features, logits = network.activations(images, batch_size=4)
        ref = module.scores(tf.image.resize(images, (8, 8), method="bilinear"))
        self.assertAllClose(features, ref["features"], atol=1e-6)
        self.assertAllClose(logits, ref["logits"], atol=1e-6)
        with self.assertRaisesRegex(ValueError, r"no signature 'nope'.*\['scores'\]"):
            scores.ScoringNetwork.from_saved_model(path, signature="nope")

    def test_network_requires_name(self):
        with self.assertRaisesRegex(ValueError, "name must be a non-empty string"):
            scores.ScoringNetwork(lambda x: x, "")
