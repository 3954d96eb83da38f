"""The VIM prior: causality, training, features, errors (sampling: tests/test_sampling.py)."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

import xla_check
from testcase import TestCase
from vim_tf.models.vim import VIM
from vim_tf.training import optimizers


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

    def test_train_step_learns_a_fixed_sequence(self):
        model = make_prior()
        model.compile(prior=optimizers.make_optimizer(learning_rate=3e-3, weight_decay=0.0))
        model.build_optimizers()
        tokens = np.tile(np.arange(9, dtype=np.int32) % 11, (8, 1))
        data = {"tokens": tf.constant(tokens), "label": tf.zeros([8], tf.int32)}
        step = tf.function(model.train_step)
        first = float(step(data)["bits_per_token"])
        for _ in range(60):
            out = step(data)
        self.assertLess(float(out["bits_per_token"]), 0.5 * first)
        # bits per token is the cross-entropy in nats / ln 2.
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tokens, logits=model(tokens, tf.zeros([8], tf.int32))
        )
        loss, _ = model.nll(tokens, tf.zeros([8], tf.int32))
        self.assertAllClose(loss, tf.reduce_mean(ce))

    def test_xla_train_step_equals_graph_step(self):
        # What train.jit_compile = True runs for the digits priors.
        model = make_prior()
        rng = np.random.default_rng(3)
        data = {
            "tokens": tf.constant(rng.integers(0, 11, (8, 9)), tf.int32),
            "label": tf.constant(rng.integers(0, 3, (8,)), tf.int32),
        }
        xla_check.assert_same_updates(self, model, data)

    def test_features(self):
        model = make_prior()
        tokens = np.random.randint(0, 11, size=(2, 9)).astype(np.int32)
        f = model.features(tokens, tf.constant([0, 0]), layer=1).numpy()
        _, hidden = model(tokens, tf.constant([0, 0]), return_hidden=True)
        self.assertAllClose(f, hidden[0].numpy().mean(1))
        with self.assertRaisesRegex(ValueError, r"layer must be in \[1, 2\], got 3"):
            model.features(tokens, layer=3)

    def test_checkpoint_and_config(self):
        model = make_prior(class_dropout=0.1)
        self.assert_checkpoint_covers(model)
        clone = VIM.from_config(model.get_config())
        clone.build()
        clone.set_weights(model.get_weights())
        tokens = np.random.randint(0, 11, size=(2, 9)).astype(np.int32)
        self.assertAllClose(clone(tokens, tf.constant([0, 1])), model(tokens, tf.constant([0, 1])))

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "needs its quantizer"):
            VIM(num_layers=1, num_heads=1, hidden_dim=8, mlp_dim=8)
        with self.assertRaisesRegex(ValueError, "class_dropout needs a class-conditional"):
            make_prior(num_classes=0, class_dropout=0.1)


if __name__ == "__main__":
    tf.test.main()
