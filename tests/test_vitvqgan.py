"""The ViT-VQGAN model: inference paths, the GAN train step, configuration errors."""

import numpy as np
import tensorflow as tf

import xla_check
from testcase import TestCase
from vim_tf.losses import adversarial
from vim_tf.models.vitvqgan import ViTVQGAN
from vim_tf.training import optimizers

STACK = {"num_layers": 1, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}


def make_model(**kw):
    args = dict(
        image_size=16,
        patch_size=4,
        encoder=STACK,
        decoder=STACK,
        codebook_size=16,
        code_dim=4,
        discriminator={"channel_base": 64, "channel_max": 8},
        r1_interval=2,
        disc_start_step=0,
    )
    args.update(kw)
    model = ViTVQGAN(**args)
    model.build_all()
    opts = {"generator": optimizers.make_optimizer(learning_rate=1e-3)}
    if model.discriminator is not None:
        opts["discriminator"] = optimizers.make_optimizer(learning_rate=1e-3)
    model.compile(**opts)
    model.build_optimizers()
    return model


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": tf.constant(rng.uniform(size=(n, 16, 16, 3)), tf.float32),
        "label": tf.zeros((n,), tf.int32),
    }


class ViTVQGANTest(TestCase):
    def test_encode_decode_matches_call(self):
        model = make_model()
        images = batch()["image"]
        out = model(images, training=False)
        idx = model.encode(images)
        self.assertEqual(idx.shape, (8, 4, 4))
        self.assertEqual(idx.dtype, tf.int32)
        self.assertAllEqual(idx, out["indices"])
        self.assertAllClose(model.decode(idx), out["reconstruction"], atol=1e-5)
        rec = out["reconstruction"].numpy()
        self.assertTrue((rec >= 0).all() and (rec <= 1).all())

    def test_log_scale_soft_lower_bound(self):
        model = make_model(min_log_scale=-2.0)
        out = model(batch()["image"])
        self.assertGreater(float(tf.reduce_min(out["log_scale"])), -2.0)

    def test_train_step_reduces_loss_and_respects_phase(self):
        model = make_model(disc_start_step=5)
        step = tf.function(model.train_step)
        data = batch()
        d_before = [w.numpy().copy() for w in model.discriminator.trainable_weights]
        first = None
        for _ in range(5):
            result = step(data)
            first = first if first is not None else float(result["l2"])
        # Before the discriminator starts it is neither trained nor part of the generator loss.
        for before, w in zip(d_before, model.discriminator.trainable_weights):
            self.assertAllEqual(before, w.numpy())
        self.assertEqual(int(model.discriminator_optimizer.iterations), 0)
        model.set_phase(5)
        self.assertTrue(model.adversarial_active)
        step = tf.function(model.train_step)
        for m in model.metrics:
            m.reset_state()
        for _ in range(4):
            result = step(data)
        self.assertLess(float(result["l2"]), first)
        self.assertEqual(int(model.discriminator_optimizer.iterations), 4)
        changed = [
            not np.array_equal(b, w.numpy())
            for b, w in zip(d_before, model.discriminator.trainable_weights)
        ]
        self.assertTrue(all(changed))
        # Lazy R1 every 2 discriminator steps: 2 of the 4 steps computed it.
        self.assertAllClose(model._trackers["r1_penalty"].count, 2.0)
        self.assertAllClose(model._trackers["discriminator_loss"].count, 4.0)

    def test_xla_train_step_equals_graph_step(self):
        # The autoencoder step (what train.jit_compile='except_adversarial' compiles), with the
        # quantizer's straight-through estimator and the VQ losses.
        model = make_model(disc_start_step=100, restart_dead_codes=False)
        xla_check.assert_same_updates(self, model, batch(), trained=model.generator_variables)

    def test_generator_loss_composition(self):
        model = make_model(
            adversarial_weight=0.0,
            discriminator=None,
            logit_laplace_weight=0.3,
            l2_weight=2.0,
            vq_weight=0.5,
        )
        from vim_tf.losses import reconstruction as rec_lib

        images = batch()["image"]
        out = model(images, training=True)
        l2 = rec_lib.l2_loss(images, out["reconstruction"])
        ll = rec_lib.logit_laplace_loss(images, out["loc"], out["log_scale"], 0.1)
        expected = 2.0 * l2 + 0.3 * ll + 0.5 * out["vq_loss"]
        result = model.train_step(batch())
        self.assertAllClose(result["loss"], expected, rtol=1e-5)

    def test_restart_reseeds_dead_codes_from_batch(self):
        model = make_model(restart_dead_codes=True, adversarial_weight=0.0, discriminator=None)
        q = model.quantizer
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
        model = make_model(
            generator_loss=adversarial.hinge_generator_loss, discriminator_loss="hinge"
        )
        self.assert_checkpoint_covers(model)
        config = model.get_config()
        self.assertEqual(config["generator_loss"], "hinge")
        clone = ViTVQGAN.from_config(config)
        clone.build_all()
        clone.set_weights(model.get_weights())
        images = batch()["image"]
        self.assertAllClose(clone.reconstruct(images), model.reconstruct(images))

    def test_configuration_errors(self):
        with self.assertRaisesRegex(ValueError, "perceptual_weights_path is not set"):
            ViTVQGAN(
                image_size=16,
                patch_size=4,
                encoder=STACK,
                decoder=STACK,
                perceptual_weight=0.1,
                adversarial_weight=0.0,
            )
        with self.assertRaisesRegex(ValueError, "no discriminator is configured"):
            ViTVQGAN(image_size=16, patch_size=4, encoder=STACK, decoder=STACK)
        with self.assertRaisesRegex(ValueError, "unknown generator loss 'wasserstein'"):
            ViTVQGAN(
                image_size=16,
                patch_size=4,
                encoder=STACK,
                decoder=STACK,
                adversarial_weight=0.0,
                generator_loss="wasserstein",
            )
        with self.assertRaisesRegex(ValueError, r"missing \['mlp_dim'\]"):
            ViTVQGAN(
                image_size=16,
                patch_size=4,
                decoder=STACK,
                adversarial_weight=0.0,
                encoder={"num_layers": 1, "num_heads": 2, "hidden_dim": 16},
            )
        with self.assertRaisesRegex(ValueError, "not divisible by ViTVQGAN.patch_size=8"):
            ViTVQGAN(
                image_size=20, patch_size=8, encoder=STACK, decoder=STACK, adversarial_weight=0.0
            )
        with self.assertRaisesRegex(ValueError, "codebook_size must be an int >= 1, got 0"):
            ViTVQGAN(
                image_size=16,
                patch_size=4,
                encoder=STACK,
                decoder=STACK,
                adversarial_weight=0.0,
                codebook_size=0,
            )


if __name__ == "__main__":
    tf.test.main()
