"""The CNN VQGAN tokenizer (vim_tf/models/cnn_vqgan.py): the same checks as the ViT one (shapes,
token grid, gradients, checkpoint coverage, config round trip, errors), its layers against
independent references, its FLOP formula, its training by VQGANTraining, and every consumer of a
trained quantizer (loading, prior, evaluator, encode tool, export)."""

import json
import os

import gin
import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

import layer_harness
import test_loading
import xla_check
from testcase import TestCase
from tiny import TINY_VITVQGAN, with_data_dir
from vim_tf.config import gin_utils
from vim_tf.data import tokens as tokens_lib
from vim_tf.eval import evaluator
from vim_tf.export import exporter
from vim_tf.models import cnn_vqgan, loading, matmuls, vitvqgan
from vim_tf.models.cnn_vqgan import CNNVQGAN
from vim_tf.models.vim import VIM
from vim_tf.reports import flops, param_counts
from vim_tf.training import optimizers, train_lib, trainer
from vim_tf.training.prior import PriorTraining
from vim_tf.training.vqgan import VQGANTraining
from vim_tf.utils import model_dir as model_dir_lib

# 16 px images, levels of width 8, 16, 16 (a 4x4 grid, as the tiny ViT tests' 4 px patches).
ARCH = dict(channels=8, channel_multipliers=(1, 2, 2), num_res_blocks=1, num_groups=4)


def make_network(build=True, **kw):
    args = dict(image_size=16, codebook_size=16, code_dim=4, **ARCH)
    args.update(kw)
    network = CNNVQGAN(**args)
    if build:  # the training procedures build their network themselves
        network.build()
    return network


def images(n=4, seed=0, size=16):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.uniform(size=(n, size, size, 3)), tf.float32)


def floats(*shape):
    return lambda rng: (rng.uniform(-1, 1, size=shape).astype("float32"),)


# Trainable weights: a residual block has two GroupNorms and two convolutions (8), plus the 1x1
# skip's kernel and bias where the width changes (10); the attention block a GroupNorm (2) and
# the fused q/k/v and output projections (4).
SPECS = {
    "res_block_widening": layer_harness.LayerSpec(
        cnn_vqgan.ResBlock,
        {"filters": 8, "num_groups": 2},
        floats(2, 6, 6, 4),
        output_shape=(2, 6, 6, 8),
        trainable_weights=10,
    ),
    "attention_block": layer_harness.LayerSpec(
        cnn_vqgan.AttentionBlock,
        {"num_groups": 2},
        floats(2, 3, 3, 4),
        output_shape=(2, 3, 3, 4),
        trainable_weights=6,
    ),
    "conv2d": layer_harness.LayerSpec(
        matmuls.Conv2D,
        {
            "filters": 3,
            "kernel_size": (3, 3),
            "strides": (2, 2),
            "padding": "same",
            "full_precision": True,
        },
        floats(2, 8, 8, 4),
        output_shape=(2, 4, 4, 3),
        trainable_weights=2,
    ),
    # conv_in 2, levels 8 + 2 (down) + 10 + 2 (down) + 8, middle 8 + 6 + 8, norm and conv out 4.
    "encoder": layer_harness.LayerSpec(
        cnn_vqgan.CNNEncoder,
        dict(image_size=16, **ARCH),
        floats(2, 16, 16, 3),
        output_shape=(2, 16, 16),
        trainable_weights=58,
    ),
    # conv_in 2, middle 22, levels 2x8 + 2 (up) + 2x8 + 2 (up) + 10 + 8, norm and conv out 4.
    "decoder": layer_harness.LayerSpec(
        cnn_vqgan.CNNDecoder,
        dict(image_size=16, **ARCH),
        floats(2, 16, 16),
        output_shape=(2, 16, 16, 6),
        trainable_weights=82,
        mixed_dtypes="float32",  # the logit-laplace head
    ),
    "cnn_vqgan": layer_harness.LayerSpec(
        CNNVQGAN,
        dict(image_size=16, codebook_size=16, code_dim=4, **ARCH),
        floats(2, 16, 16, 3),
        output_shape={"reconstruction": (2, 16, 16, 3), "indices": (2, 4, 4), "vq_loss": ()},
        trainable_weights=145,  # encoder 58, codebook 5, decoder 82
        non_trainable_weights=1,  # the codebook's usage average
        mixed_dtypes={
            "reconstruction": "float32",
            "loc": "float32",
            "log_scale": "float32",
            "indices": "int32",
            "vq_loss": "float32",
        },
    ),
}


def _group_norm(x, gamma, beta, groups, eps=1e-6):
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(b, h, w, c) * gamma + beta


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _conv(x, layer):
    return tf.nn.conv2d(x, layer.kernel.numpy(), 1, "SAME").numpy() + layer.bias.numpy()


class CNNVQGANTest(TestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        *[(k, v) for k, v in SPECS.items() if k not in ("encoder", "decoder")]
    )
    def test_layer_harness(self, spec):
        # Shapes and weight counts, config round trip, serialization, registration, .keras
        # file, checkpoint coverage into a fresh instance, float32 variables under mixed_float16.
        try:
            self.assertEqual(layer_harness.run_layer_test(spec, self.get_temp_dir()), [])
        finally:
            keras.config.set_dtype_policy("float32")

    @parameterized.parameters("encoder", "decoder")
    def test_encoder_decoder_shapes_and_configs(self, name):
        # The rest of the harness runs on them inside the whole network (`cnn_vqgan` above).
        spec = SPECS[name]
        layer_harness.check_shape_and_weights(spec)
        layer_harness.check_serialization(spec)
        layer_harness.check_registration(spec)

    def test_encode_decode_matches_call(self):
        model = make_network()
        x = images()
        out = model(x, training=False)
        idx = model.encode(x)
        self.assertEqual((model.grid_size, model.downsampling_factor), (4, 4))
        self.assertEqual(idx.shape, (4, 4, 4))
        self.assertEqual(idx.dtype, tf.int32)
        self.assertAllEqual(idx, out["indices"])
        self.assertAllClose(model.decode(idx), out["reconstruction"], atol=1e-5)
        self.assertAllClose(model.reconstruct(x), out["reconstruction"], atol=1e-5)
        rec = out["reconstruction"].numpy()
        self.assertTrue((rec >= 0).all() and (rec <= 1).all())
        self.assertEqual(out["loc"].dtype, tf.float32)

    @parameterized.parameters(((1,), 16, 16), ((1, 1), 16, 8), ((1, 2, 2, 2), 32, 4))
    def test_token_grid(self, mults, size, grid):
        # One stride-2 step between levels: grid = image_size / 2 ** (levels - 1).
        model = make_network(image_size=size, channel_multipliers=mults)
        self.assertEqual(model.grid_size, grid)
        self.assertEqual(model.encode(images(2, size=size)).shape, (2, grid, grid))
        info = model.model_info()
        self.assertEqual(info["network"], "CNNVQGAN")
        self.assertEqual((info["grid_size"], info["downsampling_factor"]), (grid, size // grid))

    def test_log_scale_soft_lower_bound(self):
        model = make_network(min_log_scale=-2.0)
        self.assertGreater(float(tf.reduce_min(model(images())["log_scale"])), -2.0)

    def test_gradients_reach_every_trainable_variable(self):
        model = make_network()
        x = images()
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = tf.reduce_mean(tf.square(out["reconstruction"] - x)) + out["vq_loss"]
        grads = tape.gradient(loss, model.trainable_variables)
        dead = [
            v.path
            for v, g in zip(model.trainable_variables, grads)
            if g is None or not float(tf.reduce_max(tf.abs(g))) > 0
        ]
        self.assertEmpty(dead)
        parts = {v.path.split("/")[1] for v in model.trainable_variables}
        self.assertEqual(parts, {"encoder", "codebook", "decoder"})

    def test_holds_nothing_of_training(self):
        model = make_network()
        parts = {layer.name for layer in model._flatten_layers(include_self=False, recursive=False)}
        self.assertEqual(parts, {"encoder", "codebook", "decoder"})
        for attr in ("discriminator", "perceptual", "optimizer", "_trackers"):
            self.assertIsNone(getattr(model, attr, None), attr)

    def test_checkpoint_and_config_round_trip(self):
        model = make_network(beta=0.5, eps=0.05, min_log_scale=-3.0, restart_dead_codes=True)
        self.assert_checkpoint_covers(model)
        config = json.loads(json.dumps(model.get_config()))  # as model_config.json holds it
        clone = CNNVQGAN.from_config(config)
        self.assertEqual(json.loads(json.dumps(clone.get_config())), config)
        self.assertEqual(clone.channel_multipliers, (1, 2, 2))
        self.assertEqual(
            (clone.beta, clone.eps, clone.min_log_scale, clone.restart_dead_codes),
            (0.5, 0.05, -3.0, True),
        )
        clone.build()
        clone.set_weights(model.get_weights())
        x = images()
        self.assertAllClose(clone.reconstruct(x), model.reconstruct(x))

    def test_configuration_errors(self):
        kw = dict(image_size=16, **ARCH)
        with self.assertRaisesRegex(
            ValueError,
            r"CNNVQGAN.image_size=20 is not divisible by the downsampling factor 8 .*"
            r"channel_multipliers=\[1, 2, 2, 2\].* \(e.g. 16 or 24\)",
        ):
            CNNVQGAN(**dict(kw, image_size=20, channel_multipliers=(1, 2, 2, 2)))
        with self.assertRaisesRegex(
            ValueError, r"num_groups=3 does not divide the width 8 of level 0 .*\[1, 2, 4, 8\]"
        ):
            CNNVQGAN(**dict(kw, num_groups=3))
        with self.assertRaisesRegex(ValueError, r"channel_multipliers must be a non-empty.*\(\)"):
            CNNVQGAN(**dict(kw, channel_multipliers=()))
        with self.assertRaisesRegex(ValueError, r"channel_multipliers\[1\] must be an int >= 1"):
            CNNVQGAN(**dict(kw, channel_multipliers=(1, 0)))
        with self.assertRaisesRegex(ValueError, "CNNVQGAN.codebook_size must be an int >= 1"):
            CNNVQGAN(**dict(kw, codebook_size=0))
        with self.assertRaisesRegex(ValueError, r"CNNVQGAN\.eps must be"):
            CNNVQGAN(**dict(kw, eps=0.5))
        with self.assertRaisesRegex(ValueError, "CNNEncoder.image_size=14 is not divisible"):
            cnn_vqgan.CNNEncoder(14, 8, (1, 2, 2), 1, num_groups=4)

    def test_res_block_matches_numpy(self):
        block = cnn_vqgan.ResBlock(6, num_groups=2)
        x = np.random.default_rng(1).normal(size=(2, 5, 5, 4)).astype(np.float32)
        y = block(x).numpy()
        for w in block.weights:  # non-trivial norm parameters
            w.assign(w + np.random.default_rng(2).normal(size=w.shape).astype(np.float32) * 0.1)
        y = block(x).numpy()

        def norm(t, layer):
            return _group_norm(t, layer.gamma.numpy(), layer.beta.numpy(), 2)

        h = _conv(_silu(norm(x, block.norm_1)), block.conv_1)
        h = _conv(_silu(norm(h, block.norm_2)), block.conv_2)
        ref = _conv(x, block.shortcut) + h  # the 1x1 skip (4 -> 6 channels)
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)

    def test_attention_block_matches_numpy(self):
        block = cnn_vqgan.AttentionBlock(num_groups=2)
        x = np.random.default_rng(3).normal(size=(2, 3, 2, 4)).astype(np.float32)
        y = block(x).numpy()
        attn = block.attn
        t = _group_norm(x, block.norm.gamma.numpy(), block.norm.beta.numpy(), 2).reshape(2, 6, 4)
        q, k, v = np.split(t @ attn.qkv_kernel.numpy() + attn.qkv_bias.numpy(), 3, axis=-1)
        logits = q @ np.swapaxes(k, 1, 2) / 2.0  # one head of width 4
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        ref = x + ((w @ v) @ attn.out_kernel.numpy() + attn.out_bias.numpy()).reshape(x.shape)
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)

    def test_conv_follows_the_matmul_dtype(self):
        conv = matmuls.Conv2D(5, 3, padding="same")
        x = tf.random.normal((2, 6, 6, 4), seed=1)
        full = conv(x)
        with matmuls.use_matmul_dtype("bfloat16"):
            reduced = tf.function(conv)(x)
        ref = tf.nn.conv2d(
            tf.cast(x, tf.bfloat16), tf.cast(conv.kernel, tf.bfloat16), 1, "SAME"
        )  # bias is zero-initialized
        self.assertEqual(reduced.dtype, tf.float32)
        self.assertAllClose(reduced, tf.cast(ref, tf.float32), rtol=1e-6, atol=1e-6)
        self.assertGreater(float(tf.reduce_max(tf.abs(reduced - full))), 1e-4)
        head = matmuls.Conv2D(5, 3, padding="same", full_precision=True)
        head.build(x.shape)
        head.kernel.assign(conv.kernel)
        with matmuls.use_matmul_dtype("bfloat16"):
            self.assertAllClose(tf.function(head)(x), full, rtol=1e-6, atol=1e-6)

    def test_compiled_encode_takes_the_cnn(self):
        model = make_network()
        x = images()
        self.assertAllEqual(vitvqgan.compiled_encode(model)(x), model.encode(x))


class FlopsTest(TestCase):
    def test_formula_by_hand(self):
        # 8 px, widths 4, 8 (one stride-2 step: a 4x4 grid, N = 16), one residual block,
        # attention on, K = 16 codes of c = 2. conv(s, k, i, o) = 2 s^2 k^2 i o.
        got = flops.cnn_stage1_flops(8, 4, (1, 2), 1, True, codebook_size=16, code_dim=2)
        encode = (
            2 * 64 * 9 * 3 * 4  # conv_in                      13,824
            + 2 * (2 * 64 * 9 * 4 * 4)  # level 0 block        36,864
            + 2 * 16 * 9 * 4 * 4  # stride-2 conv to 4x4       4,608
            + 2 * 16 * 9 * 4 * 8  # level 1 block conv_1      9,216
            + 2 * 16 * 9 * 8 * 8  # level 1 block conv_2     18,432
            + 2 * 16 * 4 * 8  # level 1 block 1x1 skip        1,024
            + 2 * 2 * (2 * 16 * 9 * 8 * 8)  # middle blocks  73,728
            + (8 * 16 * 64 + 4 * 16 * 16 * 8)  # attention   16,384
            + 2 * 16 * 9 * 8 * 8  # conv_out                 18,432
            + 2 * 16 * 8 * 2  # to the lookup space             512
            + 2 * 16 * 2 * 16  # code similarities            1,024
        )
        decode = (
            2 * 16 * 8 * 2  # back up                           512
            + 2 * 16 * 9 * 8 * 8  # conv_in                  18,432
            + 73_728
            + 16_384  # middle
            + 2 * 2 * (2 * 16 * 9 * 8 * 8)  # level 1: 2 blocks 73,728
            + 2 * 64 * 9 * 8 * 8  # upsampling conv at 8x8   73,728
            + (2 * 64 * 9 * 8 * 4 + 2 * 64 * 9 * 4 * 4 + 2 * 64 * 8 * 4)  # level 0 block 1
            + 2 * (2 * 64 * 9 * 4 * 4)  # level 0 block 2     36,864
            + 2 * 64 * 9 * 4 * 6  # conv_out                 27,648
        )
        self.assertEqual(got["encode"], encode)
        self.assertEqual(got["forward"], encode + decode)
        self.assertEqual(got["train"], 3 * (encode + decode) - 2 * 1024 - 13_824)

    def test_profiler_agrees(self):
        model = make_network()
        x = images(2)
        analytic = param_counts.network_flops(model)
        fwd = flops.profiled_flops(lambda t: model(t, training=True)["loc"], x)
        enc = flops.profiled_flops(model.encode, x)
        # The profiler also counts elementwise work (GroupNorm, swish, softmax): a little more.
        self.assertBetween(fwd / (2 * analytic["forward"]), 1.0, 1.2)
        self.assertBetween(enc / (2 * analytic["encode"]), 1.0, 1.2)

    def test_tiny_config_matches_the_tiny_vit_in_parameters(self):
        counts = {}
        for name in ("vitvqgan_tiny", "vqgan_cnn_tiny"):
            gin.clear_config()
            gin_utils.parse([f"models/{name}.gin"], ["IMAGE_SIZE = 32"])
            network = trainer.create_model().network
            network.build()
            counts[name] = (network.count_params(), param_counts.network_flops(network))
        gin.clear_config()
        vit, cnn = counts["vitvqgan_tiny"], counts["vqgan_cnn_tiny"]
        self.assertEqual(vit[1]["forward"], 144_441_344)  # as tests/test_benchmark.py
        self.assertBetween(cnn[0] / vit[0], 0.9, 1.1)
        self.assertEqual(type(network).__name__, "CNNVQGAN")
        self.assertEqual(network.grid_size, 8)  # 64 tokens at 32 px, as the tiny ViT


def _procedure(network, **kw):
    model = VQGANTraining(network, discriminator={"channel_base": 64, "channel_max": 8}, **kw)
    model.build_all()
    opts = {"generator": optimizers.make_optimizer(learning_rate=2e-3)}
    if model.discriminator is not None:
        opts["discriminator"] = optimizers.make_optimizer(learning_rate=1e-3)
    model.compile_optimizers(opts)
    model.build_optimizers()
    return model


class CNNTrainingTest(TestCase):
    def test_train_steps_reduce_the_loss(self):
        model = _procedure(
            make_network(False, restart_dead_codes=True), disc_start_step=6, r1_interval=2
        )
        step = tf.function(model.train_step)
        data = {"image": images(8, seed=4)}
        first = float(step(data)["l2"])
        for m in model.metrics:
            m.reset_state()
        for _ in range(7):
            result = step(data)
        self.assertLess(float(result["l2"]), 0.9 * first)
        # The discriminator phase runs with the CNN's reconstructions too.
        model.set_phase(6)
        result = tf.function(model.train_step)(data)
        self.assertTrue(np.isfinite(float(result["discriminator_loss"])))
        self.assertEqual(int(model.discriminator_optimizer.iterations), 1)

    def test_xla_train_step_equals_graph_step(self):
        # The autoencoder phase is XLA-compiled by default (train.jit_compile).
        model = _procedure(make_network(False), disc_start_step=100)
        trained = model.network.trainable_variables
        xla_check.assert_same_updates(self, model, {"image": images(4)}, trained=trained)

    def test_gin_selects_the_cnn(self):
        gin_utils.parse(
            ["models/vqgan_cnn_tiny.gin"],
            ["IMAGE_SIZE = 16", "CNNVQGAN.channels = 8", "CNNVQGAN.num_groups = 4"],
        )
        model = trainer.create_model()
        self.assertIsInstance(model, VQGANTraining)
        self.assertIsInstance(model.network, CNNVQGAN)
        self.assertEqual((model.network.grid_size, model.network.codebook_size), (4, 512))

    def test_model_dir_restores_a_cnn_and_a_prior_trains_on_its_tokens(self):
        q_dir = os.path.join(self.get_temp_dir(), "q")
        procedure = _procedure(make_network(False))
        test_loading.save_model_dir(procedure, q_dir, 1, {"image": images(4)})
        self.assertEqual(model_dir_lib.read_model_info(q_dir)["network"], "CNNVQGAN")
        tokenizer = loading.load_tokenizer(q_dir)
        self.assertIsInstance(tokenizer, CNNVQGAN)
        self.assertFalse(tokenizer.trainable)
        for loaded, trained in zip(tokenizer.weights, procedure.network.weights, strict=True):
            self.assertAllEqual(loaded.numpy(), trained.numpy())
        x = images(4, seed=5)
        self.assertAllEqual(tokenizer.encode(x), procedure.network.encode(x))

        p_dir = os.path.join(self.get_temp_dir(), "prior")
        prior = PriorTraining(lambda **grid: VIM(1, 2, 16, 32, **grid), quantizer_dir=q_dir)
        prior.build_all()
        self.assertEqual((prior.network.grid_size, prior.network.codebook_size), (4, 16))
        test_loading.save_model_dir(prior, p_dir, 1, {"image": x})
        trained = loading.load_prior(p_dir)
        self.assertIsInstance(trained.tokenizer, CNNVQGAN)
        self.assertAllEqual(
            trained.tokenize({"image": x}), tf.reshape(tokenizer.encode(x), (4, 16))
        )

    def test_unknown_quantizer_class_is_named(self):
        info = {"kind": "quantizer", "network": "ResNetVQGAN"}
        with self.assertRaisesRegex(ValueError, r"'ResNetVQGAN'.*\['ViTVQGAN', 'CNNVQGAN'\]"):
            loading.network_class("runs/q", info)
        # A dir written before the class was recorded holds a ViTVQGAN.
        self.assertIs(loading.network_class("runs/q", {"kind": "quantizer"}), vitvqgan.ViTVQGAN)


# The tiny digits quantizer of tests/tiny.py with the CNN instead of the ViT.
TINY_CNN = ["include 'models/vqgan_cnn_tiny.gin'"]
TINY_CNN += [b for b in TINY_VITVQGAN if not b.startswith("ViTVQGAN.")] + [
    "CNNVQGAN.channels = 8",
    "CNNVQGAN.num_groups = 4",
    "CNNVQGAN.codebook_size = 16",
    "CNNVQGAN.code_dim = 4",
    "CNNVQGAN.restart_dead_codes = True",
    "TRAIN_STEPS = 2",
    "VQGANTraining.disc_start_step = 10",
]


class CNNPipelineTest(TestCase):
    """tools/train.py -> evaluate.py, encode.py and export.py on a CNN quantizer dir."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = cls.class_temp_dir()
        cls.q_dir = os.path.join(cls.root, "q")
        gin.clear_config()
        train_lib.run(
            cls.q_dir,
            ["gin/experiments/digits_vitvqgan.gin"],
            with_data_dir(TINY_CNN, cls.shared_data_dir()),
        )
        gin.clear_config()

    def test_trained_dir_records_the_cnn(self):
        info = model_dir_lib.read_model_info(self.q_dir, kind="quantizer")
        self.assertEqual(
            (info["network"], info["grid_size"], info["codebook_size"]), ("CNNVQGAN", 4, 16)
        )
        network, _, _ = loading.load_network(self.q_dir)
        self.assertIsInstance(network, CNNVQGAN)
        self.assertTrue(network.restart_dead_codes)

    def test_evaluator(self):
        out = os.path.join(self.get_temp_dir(), "metrics.json")
        metrics = evaluator.evaluate(self.q_dir, out)
        self.assertEqual(metrics["codebook_size"], 16)
        self.assertBetween(metrics["codebook_usage"], 1 / 16, 1.0)
        self.assertGreater(metrics["psnr"], 0.0)
        self.assertTrue(os.path.exists(metrics["reconstruction_grid"]))

    def test_encode_tool_shards(self):
        token_dir = os.path.join(self.get_temp_dir(), "tokens")
        counts = tokens_lib.encode_splits(self.q_dir, token_dir, splits=("test",), batch_size=64)
        gin.clear_config()
        info = tokens_lib.read_token_info(token_dir)
        self.assertEqual((info["grid_size"], info["codebook_size"]), (4, 16))
        self.assertGreater(counts["test"], 0)
        tokens_lib.check_token_dir(token_dir, model_dir_lib.read_model_info(self.q_dir))

    def test_export_encode_decode_round_trip(self):
        path = exporter.export_model_dir(self.q_dir, os.path.join(self.root, "export"))
        network, _, _ = loading.load_network(self.q_dir)
        loaded = tf.saved_model.load(path)
        pixels = np.random.default_rng(0).integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
        x = tf.constant(pixels.astype(np.float32) / 255.0)
        tokens = loaded.signatures["encode"](images=tf.constant(pixels))["tokens"]
        self.assertAllEqual(tokens, network.encode(x))
        decoded = loaded.signatures["decode"](tokens=tokens)["images"]
        want = tf.cast(tf.clip_by_value(tf.round(network.decode(tokens) * 255), 0, 255), tf.uint8)
        self.assertAllEqual(decoded, want)
        rec = loaded.signatures["reconstruct"](images=tf.constant(pixels))
        self.assertAllEqual(rec["images"], decoded)
        with open(os.path.join(path, exporter.EXPORT_INFO_FILE)) as f:
            self.assertEqual(json.load(f)["grid_size"], 4)


if __name__ == "__main__":
    tf.test.main()
