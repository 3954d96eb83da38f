"""Every binding in a shipped experiment takes effect; a binding that could not is refused.

For each experiment this builds what the trainer builds (the model through `create_model`, one
optimizer per gin scope the model asks for, the training dataset, the precision policy) and
compares the experiment's bindings with gin's operative config (`gin.operative_config_str`, the
parameters gin actually passed). The experiments run at a small size (the common macros
IMAGE_SIZE and BATCH_SIZE, the embedded digits as DATASET) and a prior gets a two-step tiny
quantizer; nothing here names a model class, so the check follows the configs as they change.
"""

import importlib
import inspect
import os
import pkgutil
import sys

import gin
import keras
from absl.testing import parameterized

import vim_tf
from testcase import TestCase
from tiny import train_tiny_quantizer
from vim_tf.config import gin_utils
from vim_tf.data import input_pipeline, tokens
from vim_tf.training import optimizers, precision, trainer

EXPERIMENTS = [n for n in gin_utils.shipped_configs() if n.startswith("experiments/")]
# The bindings of the config parsed last, {(scope, complete selector): {parameter names}},
# recorded through gin's public finalize-hook interface.
_PARSED = {}


@gin.config.register_finalize_hook
def _record_bindings(config):
    _PARSED.clear()
    _PARSED.update({key: set(params) for key, params in config.items()})


def parsed_bindings():
    """(scope, selector, parameter) of every binding of the last parse, macros left out."""
    return {
        (scope, selector, param)
        for (scope, selector), params in _PARSED.items()
        if not selector.endswith("macro")
        for param in params
    }


def operative_bindings():
    """(scope, configurable name, parameter) of every value gin has passed since the last parse."""
    found = set()
    for line in gin.operative_config_str().splitlines():
        left, eq, _ = line.partition(" = ")
        if not eq or line[0] in " #" or "." not in left:
            continue
        scoped, param = left.rsplit(".", 1)
        scope, _, selector = scoped.rpartition("/")
        found.add((scope, selector.rsplit(".", 1)[-1], param))
    return found


# Configurables of these modules (the dataset functions) are always checked against the
# operative config: the build below calls every one an experiment refers to.
STRICT_MODULES = ("vim_tf.data.",)


def _called_through_gin(selector):
    """True for a configurable function whose module attribute is gin's wrapper: every caller
    (the training loop, the evaluators, the probe) gets its bindings applied."""
    if selector.startswith(STRICT_MODULES):
        return False
    fn = gin.get_configurable(selector)
    if inspect.isclass(fn):
        return False
    return getattr(sys.modules.get(fn.__module__), fn.__name__, None) is fn


def unused_bindings(bindings, operative, built=()):
    """The bindings among `bindings` that gin never passed.

    Args:
      bindings: (scope, selector, parameter) triples, as `parsed_bindings` gives.
      operative: (scope, name, parameter) triples, as `operative_bindings` gives. A binding
        without a scope is used when any scope of its configurable used it (scoped calls inherit
        unscoped bindings).
      built: configurable names this check built or called itself; a binding of any other
        configurable counts as used when that configurable is a function reached only through
        gin's wrapper (`_called_through_gin`).

    Returns:
      Sorted binding names (`scope/Name.parameter`).
    """
    unused = []
    for scope, selector, param in sorted(bindings):
        name = selector.rsplit(".", 1)[-1]
        used = any(
            n == name and p == param and (not scope or s == scope or s.startswith(f"{scope}/"))
            for s, n, p in operative
        )
        if not used and name not in built and _called_through_gin(selector):
            used = True
        if not used:
            unused.append(f"{scope}/{name}.{param}" if scope else f"{name}.{param}")
    return unused


class BindingsTakeEffectTest(TestCase, parameterized.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        tmp = cls.class_temp_dir()
        cls.data_dir = cls.shared_data_dir()
        cls.quantizer_dir = os.path.join(tmp, "quantizer")
        train_tiny_quantizer(cls.quantizer_dir, cls.data_dir, steps=2)
        gin.clear_config()
        cls.token_dir = os.path.join(tmp, "tokens")
        tokens.encode_splits(cls.quantizer_dir, cls.token_dir, splits=("train",))
        gin.clear_config()
        # Random VGG16 weights: the ImageNet quantizer's perceptual loss needs a weights file.
        cls.vgg_path = os.path.join(tmp, "vgg16_notop.weights.h5")
        keras.applications.VGG16(weights=None, include_top=False).save_weights(cls.vgg_path)
        keras.backend.clear_session()

    def _small(self, *extra):
        return [
            "DATASET = 'digits'",
            "IMAGE_SIZE = 32",
            "BATCH_SIZE = 8",
            f"make_dataset.data_dir = '{self.data_dir}'",
            f"TOKEN_DIR = '{self.token_dir}'",
            f"VGG16_WEIGHTS = '{self.vgg_path}'",
            *extra,
        ]

    def _build_as_the_trainer_does(self):
        """What `train_lib.run` and `trainer.train` build from gin before the first step;
        returns the configurable names called."""
        previous = precision.snapshot()
        try:
            precision.set_precision()
            model_class = gin.get_bindings("create_model")["model_class"]
            kwargs = {}
            if "quantizer_dir" in inspect.signature(model_class.__init__).parameters:
                kwargs["quantizer_dir"] = self.quantizer_dir
            model = trainer.create_model(**kwargs)
            for name in model.active_optimizer_names():
                optimizers.make_scoped_optimizer(name)
            # The images (training, or real images for the scores) and every dataset function a
            # binding names (the trainer's, the evaluator's).
            dataset_fns = {input_pipeline.make_dataset}
            for (_, selector), params in _PARSED.items():
                if "dataset_fn" in params:
                    dataset_fns.add(gin.get_bindings(selector)["dataset_fn"])
            for dataset_fn in dataset_fns:
                dataset_fn(split="train", training=True)
        finally:
            precision.restore(previous)
        names = {"set_precision", "create_model", model_class.__name__, "make_optimizer"}
        return names | {fn.__name__ for fn in dataset_fns}

    @parameterized.parameters(*EXPERIMENTS)
    def test_every_binding_takes_effect(self, experiment):
        gin_utils.parse([experiment])
        bindings = parsed_bindings()
        self.assertNotEmpty(bindings)
        gin.clear_config()
        gin_utils.parse([experiment], self._small())
        built = self._build_as_the_trainer_does()
        unused = unused_bindings(bindings, operative_bindings(), built)
        self.assertEqual(unused, [], msg=f"{experiment}: bindings that never take effect")

    def test_an_unused_binding_is_reported(self):
        # Stage 1 reads images: token-shard settings would never take effect.
        stray = "make_token_dataset.shuffle_buffer = 5"
        gin_utils.parse(["experiments/digits_vitvqgan.gin"], [stray])
        bindings = parsed_bindings()
        gin.clear_config()
        gin_utils.parse(["experiments/digits_vitvqgan.gin"], self._small(stray))
        built = self._build_as_the_trainer_does()
        self.assertEqual(
            unused_bindings(bindings, operative_bindings(), built),
            ["make_token_dataset.shuffle_buffer"],
        )

    @parameterized.parameters(*EXPERIMENTS)
    def test_lowering_train_steps_alone_is_consistent_or_names_the_binding(self, experiment):
        # A quick run: only TRAIN_STEPS changes. Either everything builds (the schedule follows
        # TRAIN_STEPS), or the error says which binding to change.
        gin_utils.parse([experiment], self._small("TRAIN_STEPS = 6"))
        try:
            self._build_as_the_trainer_does()
        except ValueError as e:
            self.assertRegex(str(e), r"\b[A-Z]\w*\.\w+\b.*TRAIN_STEPS")


@gin.register
class _Layer(keras.layers.Layer):
    def __init__(self, width=1, **kwargs):
        super().__init__(**kwargs)
        self.width = width


@gin.configurable
def _make_layer(width=2):
    # Constructs the registered class directly: its own bindings are ignored.
    return _Layer(width=width)


class CheckerTest(TestCase):
    """The checks above can fail: ignored and unknown bindings are caught."""

    def test_binding_of_a_directly_constructed_class_is_reported(self):
        gin.parse_config("_Layer.width = 5\n_make_layer.width = 3")
        gin.finalize()
        bindings = parsed_bindings()
        layer = _make_layer()
        self.assertEqual(layer.width, 3)  # `_Layer.width = 5` never reached it.
        unused = unused_bindings(bindings, operative_bindings(), built={"_make_layer"})
        self.assertEqual(unused, ["_Layer.width"])

    def test_scoped_call_uses_unscoped_binding(self):
        operative = {("generator", "make_optimizer", "beta_1")}
        bindings = {("", "vim_tf.training.optimizers.make_optimizer", "beta_1")}
        self.assertEqual(unused_bindings(bindings, operative, {"make_optimizer"}), [])
        scoped = {("discriminator", "vim_tf.training.optimizers.make_optimizer", "beta_1")}
        self.assertEqual(
            unused_bindings(scoped, operative, {"make_optimizer"}),
            ["discriminator/make_optimizer.beta_1"],
        )

    def test_losses_take_no_bindings(self):
        # Called (or built) by the models with every argument: a binding would be ignored.
        for binding, error in (
            ("PerceptualLoss.min_size = 16", "No configurable matching"),
            ("logit_laplace_loss.eps = 0.2", "No configurable matching"),
            ("l1_loss.targets = 1", "No configurable matching"),
            ("adversarial_weight.start_step = 5", "No configurable matching"),
            ("hinge_generator_loss.fake_logits = 1", "denylisted"),
        ):
            with self.subTest(binding):
                gin.clear_config()
                with self.assertRaisesRegex(ValueError, error):
                    gin_utils.parse([], [binding])

    def test_unknown_parameter_of_a_keras_class_names_the_valid_ones(self):
        with self.assertRaisesRegex(ValueError, r"unknown gin parameter _Layer\.widht.*'width'"):
            gin_utils.parse([], ["_Layer.widht = 3"])


class DiscoveryTest(TestCase):
    def test_configurable_modules_are_the_modules_that_register(self):
        # Import every module (the binaries define flags on import: they register nothing) and
        # ask gin which of their objects are configurable.
        registering = set()
        for info in pkgutil.walk_packages(vim_tf.__path__, "vim_tf."):
            if info.ispkg or info.name.startswith("vim_tf.bin."):
                continue
            module = importlib.import_module(info.name)
            for obj in list(vars(module).values()):
                if not callable(obj) or getattr(obj, "__module__", None) != info.name:
                    continue
                try:
                    gin.get_configurable(obj)
                except ValueError:
                    continue
                registering.add(info.name)
        self.assertIn("vim_tf.training.trainer", registering)
        self.assertEqual(set(gin_utils.configurable_modules()), registering)


class UnknownParameterTest(TestCase):
    def test_lists_only_the_parameters_a_binding_may_set(self):
        # `train` takes model_dir and strategy from its caller (denylisted): not offered.
        with self.assertRaises(ValueError) as cm:
            gin_utils.parse([], ["train.trian_steps = 5"])
        message = str(cm.exception)
        self.assertIn("Valid parameters of train: [", message)
        self.assertIn("'train_steps'", message)
        self.assertNotIn("'model_dir'", message)
        self.assertNotIn("'strategy'", message)
