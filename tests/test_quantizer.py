"""Quantizer: lookup against brute force, normalization, losses, straight-through, statistics.

Its config round trip, checkpoint coverage and dtype policy are in test_layer_harness.py.
"""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

import tiny_configs as tiny
from testcase import TestCase
from vim_tf.models import quantizer as q


def brute_force_nearest(z, codebook, normalized=True):
    z = np.asarray(z, np.float64)
    cb = np.asarray(codebook, np.float64)
    if normalized:
        z = z / np.linalg.norm(z, axis=-1, keepdims=True)
        cb = cb / np.linalg.norm(cb, axis=-1, keepdims=True)
    return ((z[:, None, :] - cb[None, :, :]) ** 2).sum(-1).argmin(-1)


class QuantizerTest(TestCase, parameterized.TestCase):
    def _layer(self, **kw):
        """The tiny codebook on inputs [B, 5, 12], projected up to width 8."""
        layer = q.VectorQuantizer(**tiny.codebook(output_dim=8, **kw))
        layer.build((None, 5, 12))
        return layer

    @parameterized.named_parameters(("normalized", True), ("euclidean", False))
    def test_nearest_codes_matches_brute_force(self, normalized):
        rng = np.random.default_rng(0)
        z = rng.normal(size=(200, 8)).astype(np.float32)
        cb = rng.normal(size=(64, 8)).astype(np.float32)
        zz, cc = (q.l2_normalize(z), q.l2_normalize(cb)) if normalized else (z, cb)
        got = q.nearest_codes(zz, cc, normalized).numpy()
        np.testing.assert_array_equal(got, brute_force_nearest(z, cb, normalized))

    def test_inputs_and_codes_are_unit_vectors(self):
        layer = self._layer()
        z = tf.random.normal((3, 5, 12))
        z_lookup, idx = layer.lookup(z)
        np.testing.assert_allclose(np.linalg.norm(z_lookup.numpy(), axis=-1), 1.0, rtol=1e-5)
        cb = layer.normalized_codebook().numpy()
        np.testing.assert_allclose(np.linalg.norm(cb, axis=-1), 1.0, rtol=1e-5)
        self.assertEqual(idx.dtype, tf.int32)
        self.assertEqual(idx.shape, (3, 5))

    def test_vq_loss_matches_hand_computation(self):
        layer = self._layer(beta=0.25)
        z = tf.random.normal((2, 5, 12))
        out = layer(z)
        z_lookup, idx = layer.lookup(z)
        e = layer.normalized_codebook().numpy()[idx.numpy()]
        sq = ((z_lookup.numpy() - e) ** 2).sum(-1).mean()
        self.assertAllClose(out["codebook_loss"], sq, rtol=1e-5)
        self.assertAllClose(out["commitment_loss"], sq, rtol=1e-5)
        self.assertAllClose(out["vq_loss"], 1.25 * sq, rtol=1e-5)
        # ||a - b||^2 = 2 - 2 cos for unit vectors.
        cos = (z_lookup.numpy() * e).sum(-1)
        self.assertAllClose(out["codebook_loss"], (2 - 2 * cos).mean(), rtol=1e-4)

    def test_straight_through_and_loss_gradients(self):
        layer = self._layer()
        z = tf.random.normal((2, 5, 12))
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(z)
            out = layer(z)
            downstream = tf.reduce_sum(out["codes"] * tf.random.normal(out["codes"].shape))
            cb_loss = out["codebook_loss"]
            commit = out["commitment_loss"]
        # The decoder's gradient reaches the encoder through the straight-through estimator...
        self.assertGreater(float(tf.norm(tape.gradient(downstream, z))), 0.0)
        # ...but not the codebook (only the codebook loss trains it).
        self.assertIsNone(tape.gradient(downstream, layer.codebook))
        self.assertIsNotNone(tape.gradient(cb_loss, layer.codebook))
        self.assertIsNone(tape.gradient(cb_loss, z))
        self.assertIsNone(tape.gradient(commit, layer.codebook))
        self.assertGreater(float(tf.norm(tape.gradient(commit, z))), 0.0)

    def test_forward_value_is_the_selected_code(self):
        layer = self._layer()
        z = tf.random.normal((2, 5, 12))
        out = layer(z)
        np.testing.assert_allclose(
            out["codes"].numpy(), layer.embed(out["indices"]).numpy(), atol=1e-5
        )

    def test_code_statistics_two_equal_codes(self):
        usage, ppl = q.code_statistics(tf.constant([4.0, 0.0, 4.0, 0.0]))
        self.assertAllClose(usage, 0.5)
        self.assertAllClose(ppl, 2.0)

    def test_code_statistics_match_entropy(self):
        counts = np.array([1.0, 2.0, 3.0, 0.0, 4.0])
        p = counts / counts.sum()
        expected = np.exp(-(p[p > 0] * np.log(p[p > 0])).sum())
        usage, ppl = q.code_statistics(tf.constant(counts, tf.float32))
        self.assertAllClose(usage, 0.8)
        self.assertAllClose(ppl, expected, rtol=1e-5)

    def test_counts_histogram(self):
        layer = self._layer()
        out = layer(tf.random.normal((4, 5, 12)))
        expected = np.bincount(out["indices"].numpy().ravel(), minlength=16)
        np.testing.assert_array_equal(out["counts"].numpy(), expected)

    def test_codebook_initialized_from_standard_normal(self):
        layer = self._layer(codebook_size=4096, code_dim=8)
        cb = layer.codebook.numpy()
        self.assertAllClose(cb.mean(), 0.0, atol=0.02)
        self.assertAllClose(cb.std(), 1.0, atol=0.02)

    @parameterized.named_parameters(
        ("codebook_size", {"codebook_size": 0}, "codebook_size must be >= 1, got 0"),
        ("code_dim", {"code_dim": -2}, "code_dim must be >= 1, got -2"),
        ("beta", {"beta": -0.1}, "beta must be >= 0, got -0.1"),
        ("decay", {"dead_code_decay": 1.0}, r"dead_code_decay must be in \[0, 1\), got 1.0"),
    )
    def test_bad_arguments(self, overrides, message):
        with self.assertRaisesRegex(ValueError, message):
            q.VectorQuantizer(**tiny.codebook(**overrides))

    def test_euclidean_lookup_round_trips_through_config(self):
        # The harness covers the default (l2-normalized) codebook; this is the ablation.
        layer = self._layer(l2_normalize=False)
        clone = q.VectorQuantizer.from_config(layer.get_config())
        clone.build((None, 5, 12))
        clone.set_weights(layer.get_weights())
        z = tf.random.normal((2, 5, 12))
        self.assertAllEqual(layer(z)["indices"], clone(z)["indices"])
        self.assertAllClose(layer(z)["codes"], clone(z)["codes"])


if __name__ == "__main__":
    tf.test.main()
