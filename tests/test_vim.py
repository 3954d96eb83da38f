"""The VIM prior network: causality, cached vs recomputed sampling, features, config, errors
(its training procedure is tested in test_prior_training.py)."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from testcase import TestCase
from vim_tf.models.vim import VIM


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

    @parameterized.named_parameters(
        ("one_chunk", [(0, 9)]), ("odd_chunks", [(0, 4), (4, 5), (5, 9)])
    )
    def test_cached_steps_give_the_logits_of_the_full_call(self, chunks):
        # call_with_cache one position at a time, the cache in `chunks` (the filled ones read as
        # `past`), against the logits of the whole sequence from `call`.
        model = make_prior()
        tokens = np.random.randint(0, 11, size=(2, 9)).astype(np.int32)
        cls = tf.constant([0, 2])
        want = model(tokens, cls).numpy()
        table = model.positional_embedding().numpy()
        for pos in (0, 4, 8):
            self.assertAllClose(model.position_embedding_at(pos), table[pos])
        x, past, got = model.first_input(cls), None, []
        for start, end in chunks:
            cache = model.init_cache(2, end - start)
            self.assertEqual(cache[0][0].shape, (2, 2, end - start, 8))  # [B, H, n, hd]
            for pos in range(start, end):
                logits, cache = model.call_with_cache(x, tf.constant(pos), cache, start, past)
                got.append(logits.numpy())
                x = model.next_input(tf.constant(tokens[:, pos]), tf.constant(pos))
            past = model.join_cache(past, cache)
        self.assertAllClose(np.stack(got, 1), want, atol=1e-5)
        self.assertEqual(past[1][0].shape, (2, 2, 9, 8))

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "needs its quantizer"):
            VIM(num_layers=1, num_heads=1, hidden_dim=8, mlp_dim=8)


if __name__ == "__main__":
    tf.test.main()
