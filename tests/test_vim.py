"""The VIM prior network: causality, cached vs recomputed sampling, features, config, errors
(its training procedure is tested in test_prior_training.py)."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from vim_tf.models.vim import VIM
from vim_tf.testing.test_case import TestCase


def make_prior(num_classes=3, **kw):
    args = dict(
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        grid_size=3,
        codebook_size=11,
        dropout=0.0,
        num_classes=num_classes,
    )
    args.update(kw)
    model = VIM(**args)
    model.build()
    return model


class VIMTest(TestCase, parameterized.TestCase):
    def test_logits_are_causal(self):
        model = make_prior()
        tokens = np.random.randint(0, 11, size=(2, 9)).astype(np.int32)
        cls = tf.constant([0, 2])
        a = model(tokens, cls).numpy()
        changed = tokens.copy()
        changed[:, 5] = (changed[:, 5] + 1) % 11
        b = model(changed, cls).numpy()
        # Output i predicts token i from tokens < i: positions 0..5 cannot see token 5.
        np.testing.assert_allclose(a[:, :6], b[:, :6], rtol=1e-5, atol=1e-6)
        self.assertGreater(np.abs(a[:, 6:] - b[:, 6:]).max(), 1e-4)
        # The class token changes every position.
        c = model(tokens, tf.constant([1, 2])).numpy()
        self.assertGreater(np.abs(a[0] - c[0]).min(), 0.0)

    @parameterized.parameters(
        dict(num_classes=3, cfg_scale=1.0, top_k=0, top_p=1.0, temperature=1.0),
        dict(num_classes=3, cfg_scale=2.5, top_k=4, top_p=0.9, temperature=0.8),
        dict(num_classes=0, cfg_scale=1.0, top_k=0, top_p=0.7, temperature=1.3),
    )
    def test_cached_sampling_equals_full_recomputation(
        self, num_classes, cfg_scale, top_k, top_p, temperature
    ):
        model = make_prior(num_classes=num_classes)
        cls = tf.constant([0, 1, 2, 1], tf.int32)
        guided = cfg_scale != 1.0
        run = lambda use_cache, seed: tf.function(  # noqa: E731
            lambda: model.sample_tokens(
                cls, seed, temperature, top_k, top_p, cfg_scale, guided=guided, use_cache=use_cache
            )
        )()
        cached = run(True, 7).numpy()
        full = run(False, 7).numpy()
        self.assertEqual(cached.shape, (4, 3, 3))
        np.testing.assert_array_equal(cached, full)
        np.testing.assert_array_equal(cached, run(True, 7).numpy())
        self.assertFalse(np.array_equal(cached, run(True, 8).numpy()))

    def test_sampling_compiles_with_xla(self):
        model = make_prior()
        cls = tf.constant([0, 2], tf.int32)
        args = (cls, 3, 0.9, 3, 0.95, 2.0)
        plain = tf.function(lambda: model.sample_tokens(*args, guided=True))()
        xla = tf.function(lambda: model.sample_tokens(*args, guided=True), jit_compile=True)()
        np.testing.assert_array_equal(plain.numpy(), xla.numpy())

    def test_sampling_follows_the_model_distribution(self):
        # A prior whose logits ignore the input: every position is drawn from softmax(bias).
        model = make_prior(num_classes=0, codebook_size=4, grid_size=2)
        model.head.kernel.assign(tf.zeros_like(model.head.kernel))
        bias = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
        model.head.bias.assign(bias)
        tokens = tf.function(lambda: model.sample_tokens(tf.zeros([3000], tf.int32), 1))()
        freq = np.bincount(tokens.numpy().ravel(), minlength=4) / tokens.numpy().size
        self.assertAllClose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.02)

    def test_features(self):
        model = make_prior()
        tokens = np.random.randint(0, 11, size=(2, 9)).astype(np.int32)
        f = model.features(tokens, tf.constant([0, 0]), layer=1).numpy()
        _, hidden = model(tokens, tf.constant([0, 0]), return_hidden=True)
        self.assertAllClose(f, hidden[0].numpy().mean(1))
        with self.assertRaisesRegex(ValueError, r"layer must be in \[1, 2\], got 3"):
            model.features(tokens, layer=3)

    def test_checkpoint_and_config(self):
        model = make_prior(dropout=0.2)
        self.assert_checkpoint_covers(model)
        config = model.get_config()
        clone = VIM.from_config(config)
        self.assertEqual(clone.get_config(), config)
        self.assertEqual((clone.dropout, clone.num_classes, clone.grid_size), (0.2, 3, 3))
        clone.build()
        clone.set_weights(model.get_weights())
        tokens = np.random.randint(0, 11, size=(2, 9)).astype(np.int32)
        self.assertAllClose(clone(tokens, tf.constant([0, 1])), model(tokens, tf.constant([0, 1])))

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "needs its quantizer"):
            VIM(num_layers=1, num_heads=1, hidden_dim=8, mlp_dim=8)
        with self.assertRaisesRegex(ValueError, "guidance needs a class-conditional prior"):
            make_prior(num_classes=0).sample_tokens(tf.zeros([1], tf.int32), 0, guided=True)


if __name__ == "__main__":
    tf.test.main()
