"""The ViT-VQGAN GAN training procedure: the train step, its phases, compile, checkpoints."""

import keras
import numpy as np
import tensorflow as tf

import xla_check
from testcase import TestCase
from vim_tf.losses import adversarial
from vim_tf.losses import reconstruction as rec_lib
from vim_tf.models.vitvqgan import ViTVQGAN
from vim_tf.training import optimizers
from vim_tf.training.vqgan import VQGANTraining

STACK = {"num_layers": 1, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}
NETWORK = dict(
    image_size=16, patch_size=4, encoder=STACK, decoder=STACK, codebook_size=16, code_dim=4
)


def make_procedure(network=None, **kw):
    args = dict(discriminator={"channel_base": 64, "channel_max": 8}, r1_interval=2)
    args.update(kw)
    model = VQGANTraining(network or ViTVQGAN(**NETWORK), **args)
    model.build_all()
    opts = {"generator": optimizers.make_optimizer(learning_rate=1e-3)}
    if model.discriminator is not None:
        opts["discriminator"] = optimizers.make_optimizer(learning_rate=1e-3)
    model.compile_optimizers(opts)
    model.build_optimizers()
    return model


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": tf.constant(rng.uniform(size=(n, 16, 16, 3)), tf.float32),
        "label": tf.zeros((n,), tf.int32),
    }


class VQGANTrainingTest(TestCase):
    def test_train_step_reduces_loss_and_respects_phase(self):
        model = make_procedure(disc_start_step=5)
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
        # codebook's straight-through estimator and the VQ losses.
        model = make_procedure(disc_start_step=100)
        trained = model.network.trainable_variables
        xla_check.assert_same_updates(self, model, batch(), trained=trained)

    def test_generator_loss_composition(self):
        model = make_procedure(
            adversarial_weight=0.0,
            discriminator=None,
            logit_laplace_weight=0.3,
            l2_weight=2.0,
            vq_weight=0.5,
        )
        images = batch()["image"]
        out = model.network(images, training=True)
        l2 = rec_lib.l2_loss(images, out["reconstruction"])
        ll = rec_lib.logit_laplace_loss(images, out["loc"], out["log_scale"], 0.1)
        expected = 2.0 * l2 + 0.3 * ll + 0.5 * out["vq_loss"]
        result = model.train_step(batch())
        self.assertAllClose(result["loss"], expected, rtol=1e-5)

    def test_compile_creates_only_the_named_optimizers(self):
        model = make_procedure()
        gen, disc = model.named_optimizers().values()
        self.assertIs(model.optimizer, gen)
        self.assertIs(model.discriminator_optimizer, disc)
        items = model.checkpoint_items()
        self.assertEqual(
            set(items), {"model", "discriminator", "generator_optimizer", "discriminator_optimizer"}
        )
        self.assertIs(items["model"], model.network)
        # The checkpoint's object graph holds exactly two optimizers (no default RMSprop).
        path = tf.train.Checkpoint(**items).save(f"{self.get_temp_dir()}/ckpt")
        keys = [k for k, _ in tf.train.list_variables(path)]
        optimizer_roots = {k.split("/")[0] for k in keys if "_optimizer" in k.split("/")[0]}
        self.assertEqual(optimizer_roots, {"generator_optimizer", "discriminator_optimizer"})
        self.assertFalse([k for k in keys if "rmsprop" in k.lower()])
        self.assertFalse(any(isinstance(o, keras.optimizers.RMSprop) for o in (gen, disc)))

    def test_checkpoint_restores_into_the_bare_network(self):
        model = make_procedure()
        model.train_step(batch())
        path = tf.train.Checkpoint(**model.checkpoint_items()).save(f"{self.get_temp_dir()}/c")
        network = ViTVQGAN.from_config(model.network_config())
        network.build()
        status = tf.train.Checkpoint(model=network).restore(path)
        status.expect_partial()
        status.assert_existing_objects_matched()
        self.assertEqual(len(network.weights), len(model.network.weights))
        for restored, trained in zip(network.weights, model.network.weights):
            self.assertAllEqual(restored.numpy(), trained.numpy())
        images = batch()["image"]
        self.assertAllClose(network.reconstruct(images), model.network.reconstruct(images))

    def test_gin_network_reference_takes_effect(self):
        import gin

        from vim_tf.config import gin_utils

        gin_utils.register_configurables()
        gin.parse_config(
            [
                "VQGANTraining.network = @ViTVQGAN",
                "VQGANTraining.adversarial_weight = 0.0",
                "ViTVQGAN.image_size = 16",
                "ViTVQGAN.patch_size = 4",
                f"ViTVQGAN.encoder = {STACK}",
                f"ViTVQGAN.decoder = {STACK}",
                "ViTVQGAN.codebook_size = 8",
                "ViTVQGAN.eps = 0.05",
            ]
        )
        model = gin.get_configurable("VQGANTraining")()
        self.assertEqual((model.network.codebook_size, model.network.eps), (8, 0.05))
        self.assertIsNone(model.discriminator)

    def test_config_round_trip(self):
        model = make_procedure(
            generator_loss=adversarial.hinge_generator_loss, discriminator_loss="hinge"
        )
        config = model.get_config()
        self.assertEqual(config["generator_loss"], "hinge")
        clone = VQGANTraining.from_config(config)
        self.assertEqual(clone.network.get_config(), model.network.get_config())
        self.assertEqual(clone.discriminator_loss_fn, adversarial.hinge_discriminator_loss)

    def test_configuration_errors(self):
        network = ViTVQGAN(**NETWORK)
        with self.assertRaisesRegex(ValueError, "perceptual_weights_path is not set"):
            VQGANTraining(network, perceptual_weight=0.1, adversarial_weight=0.0)
        with self.assertRaisesRegex(
            ValueError, r"VQGANTraining\.adversarial_weight is 0\.1 but no discriminator"
        ):
            VQGANTraining(network)
        with self.assertRaisesRegex(ValueError, "unknown generator loss 'wasserstein'"):
            VQGANTraining(network, adversarial_weight=0.0, generator_loss="wasserstein")
        with self.assertRaisesRegex(ValueError, r"VQGANTraining\.l2_weight must be"):
            VQGANTraining(network, adversarial_weight=0.0, l2_weight=-1.0)
        with self.assertRaisesRegex(ValueError, r"VQGANTraining\.network must be a network"):
            VQGANTraining(None, adversarial_weight=0.0)


if __name__ == "__main__":
    tf.test.main()


class SummaryStatisticsTest(TestCase):
    def test_log_only_statistics_on_summary_steps_equal_the_eager_computation(self):
        from vim_tf.models import quantizer as quantizer_lib
        from vim_tf.training import trainer
        from vim_tf.utils import images as image_utils

        model = make_procedure(adversarial_weight=0.0, discriminator=None)
        data = batch()
        model.train_step(data, summarize=False)
        trackers = model._trackers
        self.assertEqual(float(trackers["loss"].count), 1.0)
        for name in ("psnr", "batch_codebook_usage", "batch_perplexity"):
            self.assertEqual(float(trackers[name].count), 0.0)
        for m in model.metrics:
            m.reset_state()
        # The weights the next step sees; its statistics are those of its forward pass.
        out = model.network(data["image"], training=True)
        usage, perplexity = quantizer_lib.code_statistics(out["counts"])
        psnr = tf.reduce_mean(image_utils.psnr(data["image"], out["reconstruction"]))
        result = model.train_step(data, summarize=True)
        self.assertAllClose(result["psnr"], psnr, rtol=1e-5)
        self.assertAllClose(result["batch_codebook_usage"], usage)
        self.assertAllClose(result["batch_perplexity"], perplexity, rtol=1e-5)

        # The trainer's loop: every step tracks the losses, only its last one the statistics.
        for m in model.metrics:
            m.reset_state()
        loop = trainer.make_train_loop(model, tf.distribute.get_strategy(), jit_compile=False)
        loop(iter(tf.data.Dataset.from_tensors(data).repeat()), tf.constant(3))
        self.assertEqual(float(trackers["loss"].count), 3.0)
        self.assertEqual(float(trackers["l2"].count), 3.0)
        self.assertEqual(float(trackers["psnr"].count), 1.0)
        self.assertEqual(int(model.optimizer.iterations), 5)
