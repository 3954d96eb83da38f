"""Mixed precision: gin-selected policy, bfloat16 / float16 train steps, float32 where it matters."""

import os

import gin
import keras
import numpy as np
import tensorflow as tf

from testcase import TestCase
from tiny import tiny_vitvqgan_bindings
from vim_tf.losses import adversarial
from vim_tf.models import matmuls
from vim_tf.models.vim import VIM
from vim_tf.models.vit import patchify
from vim_tf.models.vitvqgan import ViTVQGAN
from vim_tf.training import optimizers, precision, train_lib
from vim_tf.training.prior import PriorTraining
from vim_tf.training.vqgan import VQGANTraining

STACK = {"num_layers": 1, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}


def make_quantizer(policy):
    """The tiny quantizer with an active discriminator, built under `policy`."""
    keras.config.set_dtype_policy(policy)
    network = ViTVQGAN(
        image_size=16, patch_size=4, encoder=STACK, decoder=STACK, codebook_size=16, code_dim=4
    )
    model = VQGANTraining(
        network, discriminator={"channel_base": 64, "channel_max": 8}, r1_interval=2
    )
    model.build_all()
    model.compile(
        optimizer=optimizers.make_optimizer(learning_rate=1e-3),
        discriminator_optimizer=optimizers.make_optimizer(learning_rate=1e-3),
    )
    model.build_optimizers()
    return model


def make_prior(policy):
    keras.config.set_dtype_policy(policy)
    network = VIM(
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        grid_size=3,
        codebook_size=11,
        dropout=0.0,
        num_classes=3,
    )
    model = PriorTraining(network)
    model.build()
    model.compile(optimizer=optimizers.make_optimizer(learning_rate=1e-3))
    model.build_optimizers()
    return model


def image_batch(n=8):
    rng = np.random.default_rng(0)
    return {
        "image": tf.constant(rng.uniform(size=(n, 16, 16, 3)), tf.float32),
        "label": tf.zeros((n,), tf.int32),
    }


def token_batch(n=8):
    rng = np.random.default_rng(1)
    return {
        "tokens": tf.constant(rng.integers(0, 11, size=(n, 9)), tf.int32),
        "label": tf.constant(rng.integers(0, 3, size=(n,)), tf.int32),
    }


def results(out):
    return {k: float(v) for k, v in out.items()}


class MixedPrecisionTest(TestCase):
    def setUp(self):
        super().setUp()
        keras.config.set_dtype_policy("float32")

    def tearDown(self):
        keras.config.set_dtype_policy("float32")
        super().tearDown()

    def assert_float32_variables(self, *objects):
        for obj in objects:
            for v in obj.variables:
                if v.dtype.startswith("float") or v.dtype.startswith("bfloat"):
                    self.assertEqual(v.dtype, "float32", msg=v.path)

    # ------------------------------------------------------------ the policy itself
    def test_invalid_policy_name(self):
        with self.assertRaisesRegex(ValueError, "mixed_bfloat16.*got 'bfloat16'"):
            precision.set_precision("bfloat16")
        self.assertEqual(precision.current_policy(), "float32")

    def test_policy_from_gin(self):
        gin.parse_config("set_precision.policy = 'mixed_bfloat16'")
        self.assertEqual(precision.set_precision(), "mixed_bfloat16")
        self.assertEqual(keras.config.dtype_policy().name, "mixed_bfloat16")
        self.assertFalse(precision.needs_loss_scaling())
        self.assertNotIsInstance(
            optimizers.make_optimizer(learning_rate=1e-3), keras.optimizers.LossScaleOptimizer
        )

    # ------------------------------------------------------------ bfloat16 matmuls
    def test_bfloat16_matmuls_policy_and_auto(self):
        with precision.use_policy("bfloat16_matmuls"):
            self.assertEqual(keras.config.dtype_policy().name, "float32")
            self.assertEqual(matmuls.matmul_dtype(), "bfloat16")
            self.assertEqual(precision.current_policy(), "bfloat16_matmuls")
            self.assertFalse(precision.needs_loss_scaling())
        self.assertEqual(precision.current_policy(), "float32")
        self.assertEqual(matmuls.matmul_dtype(), "float32")
        self.assertEqual(precision.resolve_auto({"avx512_bf16"}, {"CPU"})[0], "bfloat16_matmuls")
        self.assertEqual(precision.resolve_auto({"avx2"}, {"CPU"})[0], "float32")
        with self.assertLogs("absl", level="INFO") as logs, precision.use_policy("auto"):
            chosen = precision.current_policy()
            self.assertEqual(chosen, precision.resolve_auto()[0])
        self.assertTrue(any(f"precision 'auto': {chosen}, because" in m for m in logs.output))

    def test_bfloat16_matmuls_quantizer_step_matches_float32(self):
        data = image_batch()
        ref = make_quantizer("float32")
        model = make_quantizer("float32")
        model.set_weights(ref.get_weights())
        want = results(tf.function(ref.train_step)(data))
        with precision.use_policy("bfloat16_matmuls"):
            step = tf.function(model.train_step)
            got = results(step(data))
        for name in ("loss", "l2", "logit_laplace", "vq", "generator_adversarial", "psnr"):
            self.assertAllClose(got[name], want[name], rtol=0.05, atol=0.02, msg=name)
        self.assert_float32_variables(model, model.optimizer)
        # The updates follow the float32 ones within bfloat16 accuracy.
        for w_ref, w in zip(ref.network.trainable_weights, model.network.trainable_weights):
            self.assertAllClose(w.numpy(), w_ref.numpy(), atol=2e-3, msg=w.path)

    # ------------------------------------------------------------ bfloat16
    def test_bfloat16_quantizer_step_matches_float32(self):
        data = image_batch()
        ref = make_quantizer("float32")
        model = make_quantizer("mixed_bfloat16")
        model.set_weights(ref.get_weights())
        want = results(tf.function(ref.train_step)(data))
        got = results(tf.function(model.train_step)(data))
        for name in ("loss", "l2", "logit_laplace", "vq", "generator_adversarial"):
            self.assertTrue(np.isfinite(got[name]), msg=name)
            self.assertAllClose(got[name], want[name], rtol=0.05, atol=0.02, msg=name)
        for name in ("discriminator_loss", "r1_penalty"):
            self.assertTrue(np.isfinite(got[name]), msg=name)
            self.assertAllClose(got[name], want[name], rtol=0.1, atol=0.02, msg=name)
        # Step 0 computes R1 (interval 2) and its metric records it.
        self.assertGreater(want["r1_penalty"], 0.0)
        self.assertEqual(int(model.optimizer.iterations), 1)
        self.assert_float32_variables(model, model.optimizer, model.discriminator_optimizer)

        images = data["image"]
        # Activations inside the transformer are bfloat16.
        tokens = model.network.encoder.patch_embed(patchify(images, 4))
        self.assertEqual(tokens.dtype, tf.bfloat16)
        self.assertEqual(model.network.encoder.transformer(tokens).dtype, tf.bfloat16)
        self.assertEqual(model.network.decoder.transformer.block_0.attn.compute_dtype, "bfloat16")
        # The quantizer's lookup vectors, distances and losses are float32: its indices are the
        # float32 nearest codes of its (float32) lookup vectors.
        q = model.network.codebook(model.network.encoder(images))
        self.assertEqual(q["z"].dtype, tf.float32)
        for name in ("vq_loss", "codebook_loss", "commitment_loss"):
            self.assertEqual(q[name].dtype, tf.float32, msg=name)
        z = q["z"].numpy().reshape(-1, 4)
        cb = model.network.codebook.codebook.numpy()
        cb = cb / np.linalg.norm(cb, axis=-1, keepdims=True)
        np.testing.assert_array_equal(q["indices"].numpy().reshape(-1), np.argmax(z @ cb.T, -1))
        self.assertEqual(model.network.codebook.normalized_codebook().dtype, tf.float32)
        # The output head and the losses that read it are float32.
        out = model.network(images)
        self.assertEqual(model.network.decoder.to_pixels.compute_dtype, "float32")
        for name in ("loc", "log_scale", "reconstruction"):
            self.assertEqual(out[name].dtype, tf.float32, msg=name)
        # R1 is computed and returned in float32 and stays close to the float32 model's.
        r1 = adversarial.r1_penalty(model.discriminator, images)
        self.assertEqual(r1.dtype, tf.float32)
        self.assertAllClose(r1, adversarial.r1_penalty(ref.discriminator, images), rtol=0.15)

    def test_bfloat16_prior_step_matches_float32(self):
        data = token_batch()
        ref = make_prior("float32")
        model = make_prior("mixed_bfloat16")
        start = ref.get_weights()
        model.set_weights(start)
        want = results(tf.function(ref.train_step)(data))
        got = results(tf.function(model.train_step)(data))
        self.assertTrue(np.isfinite(got["loss"]))
        self.assertAllClose(got["loss"], want["loss"], rtol=0.02)
        self.assert_float32_variables(model, model.optimizer)
        logits, hidden = model.network(data["tokens"], data["label"], return_hidden=True)
        self.assertEqual(logits.dtype, tf.float32)
        self.assertEqual(hidden[0].dtype, tf.bfloat16)
        self.assertEqual(model.network.head.compute_dtype, "float32")
        # The updated weights moved like the float32 model's (Adam's first step is ~lr*sign(g)).
        self.assert_updates_agree(ref, model, min_agreement=0.8, before=start)

    def assert_updates_agree(self, ref, model, min_agreement, before):
        """From the same weights `before`, one update moved most weights by about as much, in the
        same direction, as it did the float32 model's."""
        ref_w, got_w = ref.get_weights(), model.get_weights()
        agree, ratios = [], []
        for w0, w_ref, w_got in zip(before, ref_w, got_w, strict=True):
            d_ref, d_got = (w_ref - w0).ravel(), (w_got - w0).ravel()
            moved = np.abs(d_ref) > 1e-4
            agree.append(np.sign(d_ref[moved]) == np.sign(d_got[moved]))
            ratios.append(np.abs(d_got[moved]) / np.abs(d_ref[moved]))
        agree, ratios = np.concatenate(agree), np.concatenate(ratios)
        self.assertGreater(agree.mean(), min_agreement)
        self.assertAllClose(np.median(ratios), 1.0, atol=0.2)

    # ------------------------------------------------------------ float16 with loss scaling
    def test_float16_quantizer_step_with_loss_scaling(self):
        # This CPU runs float16 matmuls (oneDNN falls back to Eigen without AVX-512 FP16).
        data = image_batch()
        ref = make_quantizer("float32")
        model = make_quantizer("mixed_float16")
        self.assertIsInstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        self.assertIsInstance(model.discriminator_optimizer, keras.optimizers.LossScaleOptimizer)
        start = ref.get_weights()
        model.set_weights(start)
        want = results(tf.function(ref.train_step)(data))
        got = results(tf.function(model.train_step)(data))
        for name in ("loss", "l2", "logit_laplace", "vq", "discriminator_loss"):
            self.assertTrue(np.isfinite(got[name]), msg=name)
            self.assertAllClose(got[name], want[name], rtol=0.05, atol=0.02, msg=name)
        # Finite scaled gradients: both updates applied, the scale (2**15) kept.
        self.assertEqual(int(model.optimizer.iterations), 1)
        self.assertEqual(int(model.discriminator_optimizer.iterations), 1)
        self.assertEqual(float(model.optimizer.dynamic_scale), 2.0**15)
        self.assert_float32_variables(
            model, model.optimizer.inner_optimizer, model.discriminator_optimizer
        )
        # The gradients were unscaled before Adam: the update matches the float32 one.
        self.assert_updates_agree(ref, model, min_agreement=0.8, before=start)

    def test_float16_prior_step_with_loss_scaling(self):
        data = token_batch()
        ref = make_prior("float32")
        model = make_prior("mixed_float16")
        self.assertIsInstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        start = ref.get_weights()
        model.set_weights(start)
        want = results(tf.function(ref.train_step)(data))
        got = results(tf.function(model.train_step)(data))
        self.assertAllClose(got["loss"], want["loss"], rtol=0.02)
        self.assertEqual(int(model.optimizer.iterations), 1)
        self.assert_updates_agree(ref, model, min_agreement=0.8, before=start)

    # ------------------------------------------------------------ through train_lib and gin
    def test_train_lib_applies_and_restores_the_policy(self):
        data_dir = os.path.join(tf.compat.v1.test.get_temp_dir(), "tfds")
        model_dir = os.path.join(self.get_temp_dir(), "q")
        model = train_lib.run(
            model_dir,
            ["gin/experiments/digits_vitvqgan.gin"],
            tiny_vitvqgan_bindings(
                data_dir,
                "TRAIN_STEPS = 2",
                "CHECKPOINT_EVERY = 2",
                "VQGANTraining.disc_start_step = 10",
                "set_precision.policy = 'mixed_bfloat16'",
            ),
        )
        self.assertEqual(int(model.step), 2)
        self.assertEqual(model.network.encoder.transformer.block_0.compute_dtype, "bfloat16")
        self.assertEqual(model.network.codebook.codebook.dtype, "float32")
        self.assert_float32_variables(model)
        self.assertEqual(precision.current_policy(), "float32")
        self.assertIn(
            "set_precision.policy = 'mixed_bfloat16'",
            open(os.path.join(model_dir, "config.gin")).read(),
        )
