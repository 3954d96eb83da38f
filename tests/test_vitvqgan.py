"""The ViT-VQGAN tokenizer network: inference paths, codebook restarts, config round trip,
configuration errors (its GAN training procedure is tested in test_vqgan_training.py)."""

import numpy as np
import tensorflow as tf

from testcase import TestCase
from vim_tf.models import vitvqgan
from vim_tf.models.vitvqgan import ViTVQGAN

STACK = {"num_layers": 1, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}


def make_network(**kw):
    args = dict(
        image_size=16, patch_size=4, encoder=STACK, decoder=STACK, codebook_size=16, code_dim=4
    )
    args.update(kw)
    network = ViTVQGAN(**args)
    network.build()
    return network


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": tf.constant(rng.uniform(size=(n, 16, 16, 3)), tf.float32),
        "label": tf.zeros((n,), tf.int32),
    }


class ViTVQGANTest(TestCase):
    def test_encode_decode_matches_call(self):
        model = make_network()
        images = batch()["image"]
        out = model(images, training=False)
        idx = model.encode(images)
        self.assertEqual(idx.shape, (8, 4, 4))
        self.assertEqual(idx.dtype, tf.int32)
        self.assertAllEqual(idx, out["indices"])
        self.assertAllClose(model.decode(idx), out["reconstruction"], atol=1e-5)
        self.assertAllClose(model.reconstruct(images), out["reconstruction"], atol=1e-5)
        rec = out["reconstruction"].numpy()
        self.assertTrue((rec >= 0).all() and (rec <= 1).all())

    def test_compiled_encode_gives_the_eager_tokens(self):
        # The encode tool's function (XLA by default, float32 products) against eager encode,
        # on 64 images with codes of 8 dims so many scores sit close together.
        model = make_network(codebook_size=64, code_dim=8)
        images = batch(64, seed=3)["image"]
        eager = model.encode(images).numpy()
        self.assertGreater(len(np.unique(eager)), 8)
        for jit in (True, False):
            tokens = vitvqgan.compiled_encode(model, jit_compile=jit)(images)
            self.assertEqual(tokens.dtype, tf.int32)
            self.assertAllEqual(tokens, eager, msg=f"jit_compile={jit}")

    def test_log_scale_soft_lower_bound(self):
        model = make_network(min_log_scale=-2.0)
        out = model(batch()["image"])
        self.assertGreater(float(tf.reduce_min(out["log_scale"])), -2.0)

    def test_holds_nothing_of_training(self):
        model = make_network()
        parts = {layer.name for layer in model._flatten_layers(include_self=False, recursive=False)}
        self.assertEqual(parts, {"encoder", "codebook", "decoder"})
        self.assertEqual(
            len(model.weights),
            sum(len(getattr(model, part).weights) for part in ("encoder", "codebook", "decoder")),
        )
        for attr in ("discriminator", "perceptual", "optimizer", "_trackers"):
            self.assertIsNone(getattr(model, attr, None), attr)

    def test_restart_reseeds_dead_codes_from_batch(self):
        model = make_network(restart_dead_codes=True)
        q = model.codebook
        out = model(batch()["image"])
        used = out["counts"].numpy() > 0
        n = q.restart(out["z"], out["counts"], 3)
        # usage_ema starts at 0: every code under the threshold is re-seeded with a batch vector.
        ema_after = 0.01 * out["counts"].numpy()
        dead = ema_after < q.dead_code_threshold
        self.assertEqual(int(n), int(dead.sum()))
        z = out["z"].numpy().reshape(-1, 4)
        cb = q.codebook.numpy()
        for k in np.where(dead)[0]:
            self.assertLess(np.abs(z - cb[k]).sum(-1).min(), 1e-5)
        self.assertAllClose(q.usage_ema.numpy()[dead], np.ones(dead.sum()))
        self.assertTrue(used.any())

    def test_checkpoint_and_config_round_trip(self):
        model = make_network(beta=0.5, eps=0.05, min_log_scale=-3.0, restart_dead_codes=True)
        self.assert_checkpoint_covers(model)
        config = model.get_config()
        clone = ViTVQGAN.from_config(config)
        self.assertEqual(clone.get_config(), config)
        self.assertEqual(
            (clone.beta, clone.eps, clone.min_log_scale, clone.restart_dead_codes),
            (0.5, 0.05, -3.0, True),
        )
        clone.build()
        clone.set_weights(model.get_weights())
        images = batch()["image"]
        self.assertAllClose(clone.reconstruct(images), model.reconstruct(images))

    def test_configuration_errors(self):
        kw = dict(image_size=16, patch_size=4, encoder=STACK, decoder=STACK)
        with self.assertRaisesRegex(ValueError, r"missing \['mlp_dim'\]"):
            ViTVQGAN(**dict(kw, encoder={"num_layers": 1, "num_heads": 2, "hidden_dim": 16}))
        with self.assertRaisesRegex(ValueError, "not divisible by ViTVQGAN.patch_size=8"):
            ViTVQGAN(**dict(kw, image_size=20, patch_size=8))
        with self.assertRaisesRegex(ValueError, "codebook_size must be an int >= 1, got 0"):
            ViTVQGAN(**dict(kw, codebook_size=0))
        with self.assertRaisesRegex(ValueError, r"ViTVQGAN\.eps must be"):
            ViTVQGAN(**dict(kw, eps=0.5))


if __name__ == "__main__":
    tf.test.main()
