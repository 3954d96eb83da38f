"""The shared layer harness (tests/layer_harness.py) applied to every layer and network with
weights in vim_tf.models and vim_tf.losses, one parameterized case per class and check; and
broken layers planted to show that every check can fail."""

import atexit
import functools
import os
import shutil
import tempfile
import unittest

import gin
import keras
import numpy as np
import pytest

import tiny_configs as tiny
from layer_harness import (
    LayerSpec,
    check_checkpoint,
    check_config_round_trip,
    check_dtype_policy,
    check_keras_file,
    check_registration,
    check_serialization,
    check_shape_and_weights,
    run_layer_test,
)
from vim_tf.losses.perceptual import PerceptualLoss
from vim_tf.models import discriminator as disc
from vim_tf.models import matmuls, quantizer, randomness, vit
from vim_tf.models.classifier import ImageClassifier
from vim_tf.models.vim import VIM
from vim_tf.models.vitvqgan import ViTVQGAN

# Keras seed generators keep their state in a variable that tf.train.Checkpoint does not save: a
# resumed run starts the dropout stream from its initial state.
SEED_STATE = {"seed_state_checkpoint": "Keras SeedGenerator state is not a checkpointed object"}


def floats(*shape):
    return lambda rng: (rng.uniform(size=shape).astype(np.float32),)


def _images_pair(rng):
    x = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
    return x, np.clip(x + rng.normal(0.0, 0.2, x.shape), 0.0, 1.0).astype(np.float32)


@functools.cache
def _vgg16_weights():
    """A randomly initialized VGG16 (no top) weights file, written once per process."""
    directory = tempfile.mkdtemp(prefix="harness_vgg_")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    path = os.path.join(directory, "vgg16_notop.weights.h5")
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    vgg.save_weights(path)
    return path


def _perceptual_spec():
    return LayerSpec(
        PerceptualLoss,
        {"weights_path": _vgg16_weights(), "feature_layers": ["block1_conv2", "block2_conv2"]},
        _images_pair,
        output_shape=(),
        trainable_weights=0,
        non_trainable_weights=8,  # block1 and block2 convolutions: kernels and biases
        mixed_dtypes="float32",
    )


LAYERS = {
    "attention": LayerSpec(
        vit.Attention,
        {"num_heads": 2, "dropout": 0.1, "causal": True},
        floats(2, 5, 8),
        output_shape=(2, 5, 8),
        trainable_weights=4,  # fused q/k/v kernel and bias, output kernel and bias
        opt_outs=SEED_STATE,
    ),
    "dense": LayerSpec(
        matmuls.Dense,
        {"units": 3, "full_precision": True},
        floats(2, 5),
        output_shape=(2, 3),
        trainable_weights=2,
    ),
    "layer_norm": LayerSpec(
        vit.LayerNorm,
        {"epsilon": 1e-6},
        floats(2, 5, 8),
        output_shape=(2, 5, 8),
        trainable_weights=2,
    ),
    "transformer_block": LayerSpec(
        vit.TransformerBlock,
        {"num_heads": 2, "mlp_dim": 32, "dropout": 0.1},
        floats(2, 5, 16),
        output_shape=(2, 5, 16),
        trainable_weights=12,  # attention 4, two LayerNorms 4, two MLP layers 4
        opt_outs=SEED_STATE,
    ),
    "transformer_stack": LayerSpec(
        vit.TransformerStack,
        {"num_layers": 2, "num_heads": 2, "mlp_dim": 32, "dropout": 0.1, "causal": True},
        floats(2, 5, 16),
        output_shape=(2, 5, 16),
        trainable_weights=24,  # two blocks
        opt_outs=SEED_STATE,
    ),
    "vit_encoder": LayerSpec(
        vit.ViTEncoder,
        tiny.vit_encoder(dropout=0.1),
        floats(2, 16, 16, 3),
        output_shape=(2, 16, 16),
        trainable_weights=20,  # patch embedding 2, one block 12, LayerNorm 2, feed-forward 4
        opt_outs=SEED_STATE,
    ),
    "vit_decoder": LayerSpec(
        vit.ViTDecoder,
        tiny.vit_encoder(out_channels=6),
        floats(2, 16, 16),
        output_shape=(2, 16, 16, 6),
        trainable_weights=18,  # one block 12, LayerNorm 2, feed-forward 4
        # The logit-laplace head is float32 under mixed precision.
        mixed_dtypes="float32",
    ),
    "codebook": LayerSpec(
        quantizer.VectorQuantizer,
        tiny.codebook(beta=0.5, restart_dead_codes=True),
        floats(2, 16, 16),
        output_shape={"codes": (2, 16, 16), "indices": (2, 16), "vq_loss": (), "counts": (16,)},
        trainable_weights=5,  # projections in and out 4, codebook 1
        non_trainable_weights=1,  # usage average (dead-code restarts)
        mixed_dtypes={
            "codes": "float16",
            "z": "float32",
            "indices": "int32",
            "vq_loss": "float32",
            "counts": "float32",
        },
    ),
    "replica_dropout": LayerSpec(
        randomness.ReplicaDropout,
        {"rate": 0.25},
        floats(2, 3),
        output_shape=(2, 3),
        trainable_weights=0,
        opt_outs=SEED_STATE,
    ),
    "equalized_conv": LayerSpec(
        disc.EqualizedConv2D,
        {"filters": 4, "kernel_size": 3, "strides": 2, "activation": "lrelu"},
        floats(2, 8, 8, 3),
        output_shape=(2, 4, 4, 4),
        trainable_weights=2,
    ),
    "equalized_dense": LayerSpec(
        disc.EqualizedDense,
        {"units": 3, "activation": "lrelu"},
        floats(2, 5),
        output_shape=(2, 3),
        trainable_weights=2,
    ),
    "blur": LayerSpec(
        disc.Blur,
        {"kernel": [1, 2, 1], "pad": [1, 0], "down": 2},
        floats(2, 8, 8, 3),
        output_shape=(2, 4, 4, 3),
        trainable_weights=0,
    ),
    "minibatch_stddev": LayerSpec(
        disc.MinibatchStdDev,
        {"group_size": 2, "num_channels": 2},
        floats(4, 4, 4, 4),
        output_shape=(4, 4, 4, 6),
        trainable_weights=0,
    ),
    "discriminator_block": LayerSpec(
        disc.DiscriminatorBlock,
        {"tmp_channels": 4, "out_channels": 8},
        floats(2, 8, 8, 4),
        output_shape=(2, 4, 4, 8),
        trainable_weights=5,  # two 3x3 convolutions 4, the skip's 1x1 kernel 1
    ),
    "discriminator": LayerSpec(
        disc.StyleGANDiscriminator,
        tiny.discriminator(mbstd_group_size=2),
        floats(4, 16, 16, 3),
        output_shape=(4,),
        trainable_weights=18,  # fromRGB 2, two blocks 10, epilogue conv 2, two dense layers 4
        mixed_dtypes="float32",  # logits
    ),
    "perceptual_loss": _perceptual_spec,  # built on first use (writes a VGG16 weights file)
}


def _spec(case):
    return case() if callable(case) and not isinstance(case, LayerSpec) else case


@pytest.fixture(autouse=True)
def _clean_state():
    gin.clear_config()
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")
    gin.clear_config()


layer_cases = pytest.mark.parametrize("case", list(LAYERS.values()), ids=list(LAYERS))


@layer_cases
def test_shape_and_weights(case):
    check_shape_and_weights(_spec(case))


@layer_cases
def test_config_round_trip(case):
    check_config_round_trip(_spec(case))


@layer_cases
def test_serialization(case):
    check_serialization(_spec(case))


@layer_cases
def test_registration(case):
    check_registration(_spec(case))


@layer_cases
def test_keras_file(case, tmp_path):
    check_keras_file(_spec(case), str(tmp_path))


@layer_cases
def test_checkpoint(case, tmp_path):
    check_checkpoint(_spec(case), str(tmp_path))


@layer_cases
def test_dtype_policy(case):
    check_dtype_policy(_spec(case))


# ----------------------------------------------------------------------------------------------
# The three inference networks (their training procedures live in vim_tf/training/).

NETWORKS = {
    "vitvqgan": LayerSpec(
        ViTVQGAN,
        tiny.vitvqgan_network(),
        floats(2, 16, 16, 3),
        output_shape={"reconstruction": (2, 16, 16, 3), "indices": (2, 4, 4), "vq_loss": ()},
        trainable_weights=43,  # encoder 20, codebook 5, decoder 18
        non_trainable_weights=1,  # the codebook's usage average
        mixed_dtypes={
            "reconstruction": "float32",
            "loc": "float32",
            "log_scale": "float32",
            "indices": "int32",
            "vq_loss": "float32",
        },
    ),
    "vim": LayerSpec(
        VIM,
        tiny.vim(num_layers=1, dropout=0.1),
        lambda rng: (
            rng.integers(0, 11, size=(2, 9)).astype(np.int32),
            np.array([0, 2], np.int32),
        ),
        output_shape=(2, 9, 11),
        trainable_weights=20,  # embeddings 4, one block 12, final LayerNorm 2, head 2
        mixed_dtypes="float32",  # logits
        opt_outs=SEED_STATE,
    ),
    "image_classifier": LayerSpec(
        ImageClassifier,
        tiny.classifier(),
        floats(2, 16, 16, 3),
        output_shape=(2, 3),
        trainable_weights=16,
        non_trainable_weights=8,  # batch-norm statistics
        mixed_dtypes="float32",  # logits
        opt_outs=SEED_STATE,
    ),
}

network_cases = pytest.mark.parametrize("spec", list(NETWORKS.values()), ids=list(NETWORKS))


@network_cases
def test_network_shape_and_weights(spec):
    check_shape_and_weights(spec)


@network_cases
def test_network_config_round_trip(spec):
    check_config_round_trip(spec)


@network_cases
def test_network_serialization(spec):
    check_serialization(spec)


@network_cases
def test_network_registration(spec):
    check_registration(spec)


@network_cases
def test_network_keras_file(spec, tmp_path):
    check_keras_file(spec, str(tmp_path))


@network_cases
def test_network_checkpoint(spec, tmp_path):
    check_checkpoint(spec, str(tmp_path))


@network_cases
def test_network_dtype_policy(spec):
    check_dtype_policy(spec)


# ----------------------------------------------------------------------------------------------
# Planted faults: each check must report a layer that breaks what it checks.


@keras.saving.register_keras_serializable(package="vim_tf_harness_test")
class Scale(keras.layers.Layer):
    """`x @ kernel + offset`: a correct layer the broken ones below start from."""

    def __init__(self, units, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.offset = offset

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], self.units))

    def call(self, x):
        return keras.ops.matmul(x, self.kernel) + self.offset

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, offset=self.offset)
        return config


@keras.saving.register_keras_serializable(package="vim_tf_harness_test")
class ForgetsOffset(Scale):
    def get_config(self):
        config = super().get_config()
        del config["offset"]
        return config


@keras.saving.register_keras_serializable(package="vim_tf_harness_test")
class RecordsWrongUnits(Scale):
    def get_config(self):
        return {**super().get_config(), "units": self.units + 1}


@keras.saving.register_keras_serializable(package="vim_tf_harness_test")
class SetInConfig(Scale):
    def get_config(self):
        return {**super().get_config(), "offset": {self.offset}}


class NotRegistered(Scale):
    pass


@keras.saving.register_keras_serializable(package="vim_tf_harness_test")
class HiddenConstant(Scale):
    """Adds a random constant that is neither a weight nor in the config."""

    def __init__(self, units, offset=0.0, **kwargs):
        super().__init__(units, offset, **kwargs)
        self.hidden = float(np.random.uniform(1.0, 2.0))

    def call(self, x):
        return super().call(x) + self.hidden


@keras.saving.register_keras_serializable(package="vim_tf_harness_test")
class PartsInAList(keras.layers.Layer):
    """Sub-layers in a Python list: Keras tracks them, tf.train.Checkpoint does not."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.parts = [Scale(units), Scale(units)]

    def call(self, x):
        return self.parts[1](self.parts[0](x))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="vim_tf_harness_test")
class WithDropout(Scale):
    def __init__(self, units, offset=0.0, **kwargs):
        super().__init__(units, offset, **kwargs)
        self.drop = keras.layers.Dropout(0.5)

    def call(self, x, training=None):
        return self.drop(super().call(x), training=training)


@keras.saving.register_keras_serializable(package="vim_tf_harness_test")
class HalfPrecisionWeight(Scale):
    def build(self, input_shape):
        self.kernel = self.add_weight(
            name="kernel", shape=(input_shape[-1], self.units), dtype=self.compute_dtype
        )


@keras.saving.register_keras_serializable(package="vim_tf_harness_test")
class IgnoresPolicy(Scale):
    def __init__(self, units, offset=0.0, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(units, offset, **kwargs)


def _scale_spec(cls=Scale, **fields):
    args = {
        "cls": cls,
        "init_kwargs": {"units": 3, "offset": 0.5},
        "make_inputs": floats(2, 4),
        "output_shape": (2, 3),
        "trainable_weights": 1,
        **fields,
    }
    return LayerSpec(**args)


def test_a_correct_layer_passes_every_check(tmp_path):
    assert run_layer_test(_scale_spec(), str(tmp_path)) == []


FAULTS = {
    "missing_config_argument": (
        _scale_spec(ForgetsOffset),
        "config",
        r"ForgetsOffset.get_config\(\) is missing constructor arguments \['offset'\]",
    ),
    "wrong_config_value": (
        _scale_spec(RecordsWrongUnits),
        "config",
        r"records other values .*'units': \(4, 3\)",
    ),
    "hidden_state_breaks_from_config": (
        _scale_spec(HiddenConstant),
        "config",
        r"from_config clone with copied weights: output 'output' differs",
    ),
    "config_not_json": (
        _scale_spec(SetInConfig),
        "serialization",
        r"SetInConfig's serialized config is not JSON-serializable",
    ),
    "not_registered": (
        _scale_spec(NotRegistered),
        "registration",
        r"NotRegistered is not registered with keras.saving",
    ),
    "hidden_state_breaks_keras_file": (
        _scale_spec(HiddenConstant),
        "keras_file",
        r"HiddenConstant after a .keras save and load: output 'output' differs",
    ),
    "list_of_sublayers_not_checkpointed": (
        _scale_spec(
            PartsInAList, init_kwargs={"units": 4}, output_shape=(2, 4), trainable_weights=2
        ),
        "checkpoint",
        r"PartsInAList: weights not restored .*kernel",
    ),
    "seed_state_without_opt_out": (
        _scale_spec(WithDropout),
        "checkpoint",
        r"WithDropout: seed-generator states not restored .*seed_generator_state",
    ),
    "stale_seed_state_opt_out": (
        _scale_spec(opt_outs={"seed_state_checkpoint": "no reason any more"}),
        "checkpoint",
        r"Scale opts out of 'seed_state_checkpoint' \(no reason any more\) but every variable",
    ),
    "half_precision_variable": (
        _scale_spec(HalfPrecisionWeight),
        "dtype_policy",
        r"variables must stay float32 under mixed_float16: \['.*kernel: float16'\]",
    ),
    "float32_output_promised": (
        _scale_spec(mixed_dtypes="float32"),
        "dtype_policy",
        r"Scale: under mixed_float16 output 'output' is float16, documented float32",
    ),
    "global_policy_ignored": (
        _scale_spec(IgnoresPolicy),
        "dtype_policy",
        r"IgnoresPolicy ignores the global 'mixed_float16' policy",
    ),
    "wrong_output_shape": (
        _scale_spec(output_shape=(2, 4)),
        "shape_and_weights",
        r"Scale: output 'output' has shape \(2, 3\), expected \(2, 4\)",
    ),
    "wrong_weight_count": (
        _scale_spec(non_trainable_weights=1),
        "shape_and_weights",
        r"\(trainable, non-trainable\) weights are \(1, 0\), expected \(1, 1\)",
    ),
}


CHECKS = {
    "config": lambda spec, tmp_dir: check_config_round_trip(spec),
    "serialization": lambda spec, tmp_dir: check_serialization(spec),
    "registration": lambda spec, tmp_dir: check_registration(spec),
    "keras_file": check_keras_file,
    "checkpoint": check_checkpoint,
    "dtype_policy": lambda spec, tmp_dir: check_dtype_policy(spec),
    "shape_and_weights": lambda spec, tmp_dir: check_shape_and_weights(spec),
}


@pytest.mark.parametrize("spec, check, message", list(FAULTS.values()), ids=list(FAULTS))
def test_check_reports_the_planted_fault(spec, check, message, tmp_path):
    with pytest.raises(AssertionError, match=message):
        CHECKS[check](spec, str(tmp_path))


def test_opt_out_skips_with_its_reason(tmp_path):
    spec = _scale_spec(opt_outs={"keras_file": "a reason the report shows"})
    with pytest.raises(unittest.SkipTest, match="Scale opts out of keras_file: a reason the"):
        check_keras_file(spec, str(tmp_path))


@pytest.mark.parametrize(
    "opt_outs, message",
    [
        ({"dtype_policy": "x"}, r"unknown opt-outs \['dtype_policy'\] for Scale"),
        ({"keras_file": " "}, r"opt-outs \['keras_file'\] of Scale need a reason"),
    ],
    ids=["unknown_check", "empty_reason"],
)
def test_spec_rejects_bad_opt_outs(opt_outs, message):
    with pytest.raises(ValueError, match=message):
        _scale_spec(opt_outs=opt_outs)
