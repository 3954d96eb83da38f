"""A shared test harness for Keras layers and networks, in the manner of keras-hub's layer tests.

A `LayerSpec` names a class, its (tiny) constructor arguments, how to make an input and what the
output should look like. Each `check_*` function builds fresh instances from the spec and raises
`AssertionError` naming what is wrong:

  check_config_round_trip   get_config holds every constructor argument with the value it was
                            given; from_config(get_config()) has the same config and, given the
                            same weights, the same outputs.
  check_serialization       keras.saving.serialize_keras_object is JSON-safe and
                            deserialize_keras_object gives back the same config.
  check_registration        the class is registered with keras.saving.register_keras_serializable
                            (so saved files load without custom_objects).
  check_keras_file          a .keras save/load gives the same config and outputs.
  check_checkpoint          every variable comes back from a tf.train.Checkpoint restored into a
                            fresh instance, and the outputs match.
  check_dtype_policy        under 'mixed_float16' the variables stay float32 and the outputs have
                            the documented dtypes (float32 where the code promises it).
  check_shape_and_weights   output shapes, and the number of trainable/non-trainable weights.

A class that cannot pass a check says so in `LayerSpec.opt_outs` ({check name: reason}); the check
then raises `unittest.SkipTest` with the reason, so the test report shows it. A stale opt-out (the
class passes after all) is itself a failure for 'seed_state_checkpoint', the one opt-out a check
can verify cheaply.

Example:

    spec = LayerSpec(
        cls=keras.layers.Dense,
        init_kwargs={"units": 3},
        make_inputs=lambda rng: (rng.normal(size=(2, 4)).astype("float32"),),
        output_shape=(2, 3),
        trainable_weights=2,
    )
    check_config_round_trip(spec)
"""

import copy
import dataclasses
import inspect
import json
import os
import unittest
from collections.abc import Callable, Mapping

import keras
import numpy as np
import tensorflow as tf

# The checks a spec may opt out of ('seed_state_checkpoint': Keras seed-generator states that a
# tf.train.Checkpoint does not save; every other weight must always be saved).
OPT_OUTS = ("registration", "keras_file", "seed_state_checkpoint")


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """What the harness needs to know about one layer or network class.

    Attributes:
      cls: the layer or model class.
      init_kwargs: constructor arguments (deep-copied for every instance).
      make_inputs: `rng -> tuple` of positional call arguments (numpy), given a
        `np.random.Generator` seeded the same way on every call.
      output_shape: the expected output shape, or {output key: shape} for dict outputs (only the
        listed keys are checked).
      trainable_weights: expected `len(layer.trainable_weights)` once built.
      non_trainable_weights: expected `len(layer.non_trainable_weights)`.
      mixed_dtypes: output dtype under the 'mixed_float16' policy: one dtype name, or
        {output key: dtype name} (only the listed keys are checked).
      call_kwargs: keyword arguments of every call.
      opt_outs: {check name: reason} for checks the class cannot pass; names from `OPT_OUTS`.
    """

    cls: type
    init_kwargs: Mapping
    make_inputs: Callable
    output_shape: tuple | Mapping
    trainable_weights: int
    non_trainable_weights: int = 0
    mixed_dtypes: str | Mapping = "float16"
    call_kwargs: Mapping = dataclasses.field(default_factory=dict)
    opt_outs: Mapping = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        unknown = sorted(set(self.opt_outs) - set(OPT_OUTS))
        if unknown:
            raise ValueError(f"unknown opt-outs {unknown} for {self.name}; valid: {OPT_OUTS}")
        empty = [k for k, reason in self.opt_outs.items() if not str(reason).strip()]
        if empty:
            raise ValueError(f"opt-outs {empty} of {self.name} need a reason")

    @property
    def name(self):
        return self.cls.__name__

    def inputs(self):
        return tuple(self.make_inputs(np.random.default_rng(0)))

    def new(self):
        """A fresh, unbuilt instance."""
        return self.cls(**copy.deepcopy(dict(self.init_kwargs)))

    def call(self, layer):
        return layer(*self.inputs(), **self.call_kwargs)

    def build(self):
        """A fresh instance built by one call on the spec's input: (layer, outputs)."""
        layer = self.new()
        return layer, self.call(layer)


def _skip_if_opted_out(spec, check):
    reason = spec.opt_outs.get(check)
    if reason is not None:
        raise unittest.SkipTest(f"{spec.name} opts out of {check}: {reason}")


def _outputs_by_key(outputs):
    """A layer's outputs as {key: array}: dict keys, tuple positions, or 'output'."""
    if isinstance(outputs, Mapping):
        return {str(k): v for k, v in outputs.items()}
    if isinstance(outputs, (tuple, list)):
        return {str(i): v for i, v in enumerate(outputs)}
    return {"output": outputs}


def _assert_same_outputs(spec, expected, got, what):
    expected, got = _outputs_by_key(expected), _outputs_by_key(got)
    if sorted(expected) != sorted(got):
        raise AssertionError(f"{spec.name} {what}: output keys {sorted(got)} != {sorted(expected)}")
    for key, want in expected.items():
        want, have = np.asarray(want), np.asarray(got[key])
        if want.shape != have.shape or want.dtype != have.dtype:
            raise AssertionError(
                f"{spec.name} {what}: output {key!r} is {have.dtype}{list(have.shape)}, "
                f"expected {want.dtype}{list(want.shape)}"
            )
        if not np.allclose(have, want, rtol=1e-5, atol=1e-5, equal_nan=True):
            worst = float(np.max(np.abs(have.astype(np.float64) - want.astype(np.float64))))
            raise AssertionError(
                f"{spec.name} {what}: output {key!r} differs (max abs difference {worst:.3g})"
            )


def plain(value):
    """Config values in JSON's vocabulary (tuples as lists, numpy scalars as Python numbers)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _constructor_arguments(cls):
    """Names of `cls.__init__`'s named arguments (without self, *args, **kwargs)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in params if p.kind not in variadic]


def _config_differences(a, b):
    a, b = plain(a), plain(b)
    keys = sorted(set(a) | set(b))
    return {k: (a.get(k, "<missing>"), b.get(k, "<missing>")) for k in keys if a.get(k) != b.get(k)}


def check_config_round_trip(spec):
    """get_config holds every constructor argument; from_config rebuilds the same layer."""
    layer, outputs = spec.build()
    config = layer.get_config()
    missing = [n for n in _constructor_arguments(spec.cls) if n not in config]
    if missing:
        raise AssertionError(
            f"{spec.name}.get_config() is missing constructor arguments {missing}: from_config "
            "would rebuild the layer with their defaults"
        )
    wrong = {
        k: (config[k], v)
        for k, v in spec.init_kwargs.items()
        if k in config and plain(config[k]) != plain(v)
    }
    if wrong:
        raise AssertionError(
            f"{spec.name}.get_config() records other values than the constructor got "
            f"({{argument: (config value, given value)}}): {wrong}"
        )
    clone = spec.cls.from_config(copy.deepcopy(config))
    diff = _config_differences(clone.get_config(), config)
    if diff:
        raise AssertionError(
            f"{spec.name}.from_config(get_config()) has another config "
            f"({{key: (clone, original)}}): {diff}"
        )
    spec.call(clone)
    if len(clone.weights) != len(layer.weights):
        raise AssertionError(
            f"{spec.name}.from_config(get_config()) has {len(clone.weights)} weights, the "
            f"original {len(layer.weights)}"
        )
    clone.set_weights(layer.get_weights())
    _assert_same_outputs(spec, outputs, spec.call(clone), "from_config clone with copied weights")


def check_serialization(spec):
    """serialize_keras_object is JSON-safe; deserialize_keras_object gives the same config."""
    layer = spec.new()  # configs do not depend on building
    try:
        text = json.dumps(keras.saving.serialize_keras_object(layer))
    except TypeError as e:
        raise AssertionError(
            f"{spec.name}'s serialized config is not JSON-serializable ({e}): get_config must "
            "return plain Python values"
        ) from e
    custom = {keras.saving.get_registered_name(spec.cls): spec.cls}
    revived = keras.saving.deserialize_keras_object(json.loads(text), custom_objects=custom)
    if type(revived) is not spec.cls:
        raise AssertionError(f"{spec.name} deserialized as {type(revived).__name__}")
    diff = _config_differences(revived.get_config(), layer.get_config())
    if diff:
        raise AssertionError(
            f"{spec.name} serialization round trip changes the config "
            f"({{key: (revived, original)}}): {diff}"
        )


def check_registration(spec):
    """The class is found by its registered name, so .keras files load without custom_objects."""
    _skip_if_opted_out(spec, "registration")
    name = keras.saving.get_registered_name(spec.cls)
    if keras.saving.get_registered_object(name) is not spec.cls:
        raise AssertionError(
            f"{spec.name} is not registered with keras.saving: decorate it with "
            '@keras.saving.register_keras_serializable(package="vim_tf")'
        )


def check_keras_file(spec, tmp_dir):
    """A .keras save and load gives the same class, config and outputs."""
    _skip_if_opted_out(spec, "keras_file")
    layer, outputs = spec.build()
    path = os.path.join(tmp_dir, f"{spec.name}.keras")
    keras.saving.save_model(layer, path)
    custom = None
    if "registration" in spec.opt_outs:
        custom = {keras.saving.get_registered_name(spec.cls): spec.cls}
    restored = keras.saving.load_model(path, custom_objects=custom, compile=False)
    if type(restored) is not spec.cls:
        raise AssertionError(f"{spec.name} loads from a .keras file as {type(restored).__name__}")
    diff = _config_differences(restored.get_config(), layer.get_config())
    if diff:
        raise AssertionError(f"{spec.name} .keras round trip changes the config: {diff}")
    _assert_same_outputs(spec, outputs, spec.call(restored), "after a .keras save and load")


def _shifted(variable, rng):
    """A new value for `variable`: unlike any initializer (zeros, ones, a fresh random draw)."""
    value = np.asarray(variable.numpy())
    if np.issubdtype(value.dtype, np.integer):
        return value + rng.integers(1, 1000, size=value.shape).astype(value.dtype)
    # A positive shift keeps variances (batch-norm statistics) positive.
    return value + rng.uniform(0.05, 0.1, size=value.shape).astype(value.dtype)


def _restore_into_fresh(spec, path):
    fresh, _ = spec.build()
    status = tf.train.Checkpoint(layer=fresh).restore(path)
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise AssertionError(
            f"{spec.name}: objects of a fresh instance are not in the checkpoint: {e}"
        ) from e
    return fresh


def check_checkpoint(spec, tmp_dir):
    """Every variable is saved by tf.train.Checkpoint and restored into a fresh instance."""
    layer, _ = spec.build()
    rng = np.random.default_rng(1)
    for variable in layer.variables:
        variable.assign(_shifted(variable, rng))
    outputs = spec.call(layer)
    path = tf.train.Checkpoint(layer=layer).save(os.path.join(tmp_dir, f"{spec.name}_ckpt"))
    fresh = _restore_into_fresh(spec, path)
    if len(fresh.variables) != len(layer.variables):
        raise AssertionError(
            f"{spec.name}: a fresh instance has {len(fresh.variables)} variables, the saved one "
            f"{len(layer.variables)}"
        )
    weight_ids = {id(w) for w in layer.weights}
    lost = [
        (source.path, id(source) in weight_ids)
        for source, restored in zip(layer.variables, fresh.variables, strict=True)
        if not np.array_equal(source.numpy(), restored.numpy())
    ]
    lost_weights = [p for p, is_weight in lost if is_weight]
    lost_seeds = [p for p, is_weight in lost if not is_weight]
    if lost_weights:
        raise AssertionError(
            f"{spec.name}: weights not restored from a tf.train.Checkpoint into a fresh instance: "
            f"{lost_weights} (sub-layers kept in a Python list drop out of TF checkpoints; keep "
            "them as attributes)"
        )
    seed_reason = spec.opt_outs.get("seed_state_checkpoint")
    if lost_seeds and seed_reason is None:
        raise AssertionError(
            f"{spec.name}: seed-generator states not restored from a tf.train.Checkpoint: "
            f"{lost_seeds} (opt out of 'seed_state_checkpoint' with a reason if intended)"
        )
    if seed_reason is not None and not lost_seeds:
        raise AssertionError(
            f"{spec.name} opts out of 'seed_state_checkpoint' ({seed_reason}) but every "
            "variable is restored: remove the opt-out"
        )
    _assert_same_outputs(spec, outputs, spec.call(fresh), "restored from a checkpoint")


def _expected_dtypes(spec, keys):
    if isinstance(spec.mixed_dtypes, str):
        return dict.fromkeys(keys, spec.mixed_dtypes)
    return dict(spec.mixed_dtypes)


def check_dtype_policy(spec):
    """Under 'mixed_float16': float32 variables, outputs of the documented dtypes, finite."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer, outputs = spec.build()
    finally:
        keras.config.set_dtype_policy(previous)
    if layer.dtype_policy.name != "mixed_float16":
        raise AssertionError(
            f"{spec.name} ignores the global 'mixed_float16' policy (its policy is "
            f"{layer.dtype_policy.name!r})"
        )
    not_float32 = [
        f"{w.path}: {w.dtype}"
        for w in layer.weights
        if keras.backend.is_float_dtype(w.dtype) and w.dtype != "float32"
    ]
    if not_float32:
        raise AssertionError(
            f"{spec.name}: variables must stay float32 under mixed_float16: {not_float32}"
        )
    by_key = _outputs_by_key(outputs)
    for key, want in _expected_dtypes(spec, by_key).items():
        if key not in by_key:
            raise AssertionError(f"{spec.name}: no output {key!r} (outputs: {sorted(by_key)})")
        got = keras.backend.standardize_dtype(by_key[key].dtype)
        if got != want:
            raise AssertionError(
                f"{spec.name}: under mixed_float16 output {key!r} is {got}, documented {want}"
            )
        value = np.asarray(tf.cast(by_key[key], tf.float32) if got != "int32" else by_key[key])
        if not np.all(np.isfinite(value)):
            raise AssertionError(f"{spec.name}: output {key!r} is not finite under mixed_float16")


def check_shape_and_weights(spec):
    """Output shapes and the numbers of trainable and non-trainable weights."""
    layer, outputs = spec.build()
    by_key = _outputs_by_key(outputs)
    expected = (
        dict(spec.output_shape)
        if isinstance(spec.output_shape, Mapping)
        else {"output": spec.output_shape}
    )
    for key, shape in expected.items():
        if key not in by_key:
            raise AssertionError(f"{spec.name}: no output {key!r} (outputs: {sorted(by_key)})")
        got = tuple(by_key[key].shape)
        if got != tuple(shape):
            raise AssertionError(f"{spec.name}: output {key!r} has shape {got}, expected {shape}")
    counts = (len(layer.trainable_weights), len(layer.non_trainable_weights))
    if counts != (spec.trainable_weights, spec.non_trainable_weights):
        raise AssertionError(
            f"{spec.name}: (trainable, non-trainable) weights are {counts}, expected "
            f"{(spec.trainable_weights, spec.non_trainable_weights)}"
        )


def run_layer_test(spec, tmp_dir):
    """Every check on one spec; returns the opt-out reasons of the checks it skipped."""
    skipped = []
    checks = (
        check_shape_and_weights,
        check_config_round_trip,
        check_serialization,
        check_registration,
        lambda s: check_keras_file(s, tmp_dir),
        lambda s: check_checkpoint(s, tmp_dir),
        check_dtype_policy,
    )
    for check in checks:
        try:
            check(spec)
        except unittest.SkipTest as e:
            skipped.append(str(e))
    return skipped
