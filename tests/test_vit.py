"""ViT building blocks: patching, positional embedding, attention, encoder/decoder.

Config round trips, checkpoint coverage, dtype policy and shapes of every ViT layer are in
test_layer_harness.py.
"""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

import tiny_configs as tiny
from testcase import TestCase
from vim_tf.models import vit


class ViTTest(TestCase, parameterized.TestCase):
    def test_patchify_round_trip_and_order(self):
        x = np.arange(2 * 8 * 8 * 3, dtype=np.float32).reshape(2, 8, 8, 3)
        p = vit.patchify(x, 4).numpy()
        self.assertEqual(p.shape, (2, 4, 48))
        # Token 1 is the top-right patch (raster order).
        np.testing.assert_array_equal(p[0, 1], x[0, 0:4, 4:8].reshape(-1))
        np.testing.assert_array_equal(vit.unpatchify(p, 2, 4, 3).numpy(), x)

    def test_sincos_posemb(self):
        emb = vit.sincos_2d_posemb(3, 4, 8)
        self.assertEqual(emb.shape, (12, 8))
        # Token (r=1, c=2) is row 6; first frequency is 1: sin(r), cos(r), sin(c), cos(c).
        self.assertAllClose(emb[6, [0, 2, 4, 6]], [np.sin(1), np.cos(1), np.sin(2), np.cos(2)])
        with self.assertRaisesRegex(ValueError, "divisible by 4, got 6"):
            vit.sincos_2d_posemb(2, 2, 6)

    def test_attention_matches_numpy(self):
        layer = vit.Attention(num_heads=2)
        x = tf.random.normal((2, 5, 8))
        y = layer(x).numpy()
        qkv = x.numpy() @ layer.qkv_kernel.numpy() + layer.qkv_bias.numpy()
        q, k, v = np.split(qkv, 3, axis=-1)
        heads = []
        for h in range(2):
            s = slice(4 * h, 4 * h + 4)
            logits = q[..., s] @ np.swapaxes(k[..., s], 1, 2) / 2.0
            w = np.exp(logits - logits.max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            heads.append(w @ v[..., s])
        ref = np.concatenate(heads, -1) @ layer.out_kernel.numpy() + layer.out_bias.numpy()
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)

    def test_causal_attention_ignores_the_future(self):
        layer = vit.Attention(num_heads=2, causal=True)
        x = np.random.normal(size=(1, 6, 8)).astype(np.float32)
        y1 = layer(x).numpy()
        x2 = x.copy()
        x2[:, 4:] += 10.0
        y2 = layer(x2).numpy()
        np.testing.assert_allclose(y1[:, :4], y2[:, :4], rtol=1e-5)
        self.assertGreater(np.abs(y1[:, 4:] - y2[:, 4:]).max(), 1e-3)

    def test_encoder_decoder_shapes(self):
        enc = vit.ViTEncoder(**tiny.vit_encoder(num_layers=2))
        dec = vit.ViTDecoder(**tiny.vit_encoder(num_layers=2))
        tokens = enc(tf.random.uniform((2, 16, 16, 3)))
        self.assertEqual(tokens.shape, (2, 16, 16))
        self.assertEqual(dec(tokens).shape, (2, 16, 16, 6))

    @parameterized.parameters(1, 2)
    def test_encoder_parameter_count(self, n_layers):
        d, m, p = 16, 32, 4
        enc = vit.ViTEncoder(**tiny.vit_encoder(num_layers=n_layers, hidden_dim=d, mlp_dim=m))
        enc.build((None, 16, 16, 3))
        block = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d)
        expected = (p * p * 3 * d + d) + n_layers * block + 2 * d + (d * m + m) + (m * d + d)
        self.assertEqual(enc.count_params(), expected)

    def test_bad_grid(self):
        with self.assertRaisesRegex(ValueError, "image_size 30 is not divisible by patch_size 4"):
            vit.ViTEncoder(**tiny.vit_encoder(image_size=30))


if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    tf.test.main()


class ElementwiseOpsTest(TestCase):
    def test_gelu_equals_the_tanh_form_with_its_gradient(self):
        x = tf.random.normal((4, 9), seed=0) * 3.0
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            ours = vit.gelu(x)
            ref = 0.5 * x * (1.0 + tf.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))
            weight = tf.sin(x)
            l_ours, l_ref = tf.reduce_sum(ours * weight), tf.reduce_sum(ref * weight)
        self.assertAllClose(ours, ref, atol=1e-6)
        self.assertAllClose(tape.gradient(l_ours, x), tape.gradient(l_ref, x), atol=1e-5)

    def test_layer_norm_matches_keras_with_gradients(self):
        x = tf.random.normal((2, 5, 8), seed=1) * 2.0 + 1.0
        ours, ref = vit.LayerNorm(epsilon=1e-6), keras.layers.LayerNormalization(epsilon=1e-6)
        ours.build(x.shape)
        ref.build(x.shape)
        ours.set_weights([np.linspace(0.5, 2.0, 8), np.linspace(-1.0, 1.0, 8)])
        ref.set_weights(ours.get_weights())
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y_ours, y_ref = ours(x), ref(x)
            weight = tf.cos(x)
            l_ours, l_ref = tf.reduce_sum(y_ours * weight), tf.reduce_sum(y_ref * weight)
        self.assertAllClose(y_ours, y_ref, atol=1e-5)
        for g_ours, g_ref in zip(
            tape.gradient(l_ours, [x] + ours.trainable_variables),
            tape.gradient(l_ref, [x] + ref.trainable_variables),
        ):
            self.assertAllClose(g_ours, g_ref, atol=1e-5)
