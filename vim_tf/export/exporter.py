"""What `tools/export.py` does: a trained model dir -> a versioned SavedModel for serving.

`export_model_dir(model_dir, export_dir)` writes `export_dir/<version>/` (the next integer version;
TF Serving serves the largest) with `keras.export.ExportArchive`. Every endpoint is a signature
with named inputs and a dict of named outputs. Images cross the boundary as uint8 (in: x / 255, as
the input pipeline; out: round(x * 255) clipped, as `vim_tf.utils.images.to_uint8`), except the
classifier's `scores`, which takes float images in [0, 1] (the contract of
`vim_tf.eval.scores.ScoringNetwork.from_saved_model`).

| kind | signatures (the first is also `serving_default`) |
|---|---|
| quantizer | reconstruct, encode, decode |
| prior | generate, features, encode, decode, reconstruct (its quantizer's) |
| classifier | scores |

`generate` runs the sampler's cached loop (the chunked key/value cache; the top-k and top-p
filters under a `tf.cond`, so a request with them off skips their sorts) in graph mode, not
XLA-compiled: a `jit_compile=True` function saves and reloads with `tf.saved_model.load` and runs
there XLA-compiled, but a stock TF Serving model server refuses to compile it unless started
with its experimental `--xla_cpu_compilation_enabled=true`, and XLA would also drop the in-graph
checks below (Assert is a no-op under XLA). It draws the same tokens as the XLA-compiled
`vim_tf.sampling.sampler.Sampler` (the draws are counter-based).

Values a signature's dtype and shape cannot reject (token ids, class ids, sampling settings) are
checked in-graph before anything uses them: a bad value fails the request with an
InvalidArgumentError whose message says what is valid and shows the bad values, never an image
computed from them.

Example:

    path = export_model_dir("runs/p", "runs/export")  # runs/export/1
    loaded = tf.saved_model.load(path)
    out = loaded.signatures["generate"](
        class_ids=tf.constant([3, 7]), temperature=tf.constant(1.0), top_k=tf.constant(0),
        top_p=tf.constant(1.0), cfg_scale=tf.constant(1.0), seed=tf.constant(0))
    out["images"]  # uint8 [2, H, W, 3]; out["tokens"]: int32 [2, h, w]
"""

import functools
import os
import uuid

import keras
import tensorflow as tf
from absl import logging

from vim_tf.models import loading
from vim_tf.sampling import decoding, seeds
from vim_tf.sampling.settings import KEYS as SETTING_KEYS
from vim_tf.sampling.settings import SettingTensors
from vim_tf.utils import fs
from vim_tf.utils import model_dir as model_dir_lib

EXPORT_INFO_FILE = "export_info.json"
# The linear probe's output in a prior's model dir: its best block becomes the feature layer.
PROBE_FILE = "probe.json"


# ----------------------------------------------------------------- serving-boundary helpers
def from_uint8(images):
    """uint8 [B, H, W, 3] -> float32 in [0, 1] (x / 255, as the input pipeline)."""
    return tf.cast(images, tf.float32) / 255.0


def to_uint8(images):
    """float [B, H, W, 3] in [0, 1] -> uint8: round(x * 255) clipped to [0, 255].

    The in-graph twin of `vim_tf.utils.images.to_uint8` (both round half to even).
    """
    scaled = tf.round(tf.cast(images, tf.float32) * 255.0)
    return tf.cast(tf.clip_by_value(scaled, 0.0, 255.0), tf.uint8)


def _check(ok, message, bad):
    """An assert op: fails with `message` and the values `bad` unless `ok` is all true."""
    return tf.debugging.Assert(tf.reduce_all(ok), [message, bad], summarize=16)


def _after(checks, tensors):
    """`tensors` (a structure) made to depend on `checks`: nothing downstream runs before them."""
    with tf.control_dependencies(checks):
        return tf.nest.map_structure(tf.identity, tensors)


def _with_shape_checks(fn, specs):
    """`fn` whose inputs first pass `tf.ensure_shape` against their specs.

    A signature's input shapes are not enforced when it is called by name (`signatures[...]`,
    TF Serving); without this a tensor of another rank would reach the model. The error reads
    "Shape of tensor <input> [<shape>] is not compatible with expected shape [<spec>]".
    """

    # wraps: the traced function keeps fn's argument names (callable by keyword once loaded).
    @functools.wraps(fn)
    def checked(*args):
        return fn(*(tf.ensure_shape(x, s.shape) for s, x in zip(specs, args)))

    return checked


def _check_ids(name, ids, limit, what):
    """Checks ids are in [0, limit); the message shows the out-of-range ones."""
    ok = tf.logical_and(ids >= 0, ids < limit)
    return _check(
        ok,
        f"{name} must be in [0, {limit}) ({what}); out-of-range values:",
        tf.boolean_mask(ids, tf.logical_not(ok)),
    )


# ----------------------------------------------------------------- endpoints by model kind
def quantizer_endpoints(quantizer):
    """reconstruct / encode / decode of a tokenizer (`ViTVQGAN` or `CNNVQGAN`).

    Returns:
      list of (name, fn, input_signature); the first is the default.
    """
    size, grid, k = quantizer.image_size, quantizer.grid_size, quantizer.codebook_size
    images_spec = tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")
    tokens_spec = tf.TensorSpec([None, grid, grid], tf.int32, name="tokens")

    def encode_tokens(images):
        return tf.cast(quantizer.encode(from_uint8(images)), tf.int32)

    def encode(images):
        """images uint8 [B, H, W, 3] -> {"tokens": int32 [B, h, w]}."""
        return {"tokens": encode_tokens(images)}

    def decode(tokens):
        """tokens int32 [B, h, w] in [0, codebook_size) -> {"images": uint8 [B, H, W, 3]}."""
        check = _check_ids("token ids", tokens, k, f"the codebook has {k} codes")
        tokens = _after([check], tokens)
        return {"images": to_uint8(quantizer.decode(tokens))}

    def reconstruct(images):
        """images uint8 -> {"images": uint8 (decode of the tokens), "tokens": int32}."""
        tokens = encode_tokens(images)
        return {"images": to_uint8(quantizer.decode(tokens)), "tokens": tokens}

    return [
        ("reconstruct", reconstruct, [images_spec]),
        ("encode", encode, [images_spec]),
        ("decode", decode, [tokens_spec]),
    ]


def _sampling_checks(settings):
    """In-graph `vim_tf.sampling.settings.SamplingSettings` validation (NaN fails every check).

    Args:
      settings: `SettingTensors` of the request.
    """
    temperature, top_k, top_p, cfg_scale = settings
    return [
        _check(temperature > 0, "temperature must be > 0, got", temperature),
        _check(top_k >= 0, "top_k must be >= 0 (0 = off), got", top_k),
        _check(
            tf.logical_and(top_p > 0, top_p <= 1), "top_p must be in (0, 1] (1 = off), got", top_p
        ),
        _check(cfg_scale >= 0, "cfg_scale must be >= 0 (1 = no guidance), got", cfg_scale),
    ]


def _scalar(dtype, name):
    return tf.TensorSpec([], dtype, name=name)


def _settings_specs():
    """The scalar inputs after the first of `generate`: the sampling settings, then `seed`."""
    dtypes = {"temperature": tf.float32, "top_k": tf.int32, "top_p": tf.float32}
    specs = [_scalar(dtypes.get(k, tf.float32), k) for k in SETTING_KEYS]
    return specs + [_scalar(tf.int32, "seed")]


def _sampler(prior, tokenizer):
    """`sample(class_ids, settings, seed, checks) -> {"tokens", "images"}`: batch 0 of
    `vim_tf.sampling.sampler.Sampler.sample` with `seed`, once `checks` and the settings'
    checks pass (guidance, which doubles the batch, is its own branch). Graph mode, not XLA (see
    the module docstring): the same tokens as the XLA-compiled `Sampler`."""

    def sample(class_ids, settings, seed, checks):
        checks = checks + _sampling_checks(settings)
        class_ids, settings, seed = _after(checks, (class_ids, settings, seed))
        seed = seeds.batch_seed(seed, 0)

        def run(guided):
            return lambda: decoding.sample_tokens(prior, class_ids, seed, settings, guided=guided)

        if prior.num_classes:
            tokens = tf.cond(tf.not_equal(settings.cfg_scale, 1.0), run(True), run(False))
        else:
            tokens = run(False)()
        return {"tokens": tokens, "images": to_uint8(tokenizer.decode(tokens))}

    return sample


def _conditional_generate(prior, sample):
    """`generate` of a class-conditional prior: class_ids int32 [B] and scalar settings."""
    n = prior.num_classes
    what = f"one of {n} classes; the null class {n} only serves guidance"

    def generate(class_ids, temperature, top_k, top_p, cfg_scale, seed):
        """class_ids int32 [B] and scalar settings -> {"tokens", "images"} (one sample each)."""
        checks = [
            _check_ids("class ids", class_ids, n, what),
            _check(
                tf.size(class_ids) > 0,
                "class_ids must hold at least one class id; got shape",
                tf.shape(class_ids),
            ),
        ]
        if not prior.class_dropout:
            # As sampler.check_guidance: the null class of such a prior is untrained.
            checks.append(
                _check(
                    tf.equal(cfg_scale, 1.0),
                    "cfg_scale must be 1: classifier-free guidance needs a prior trained "
                    "with PriorTraining.class_dropout > 0 and this one had class_dropout=0 "
                    "(its null class is untrained); got",
                    cfg_scale,
                )
            )
        settings = SettingTensors(temperature, top_k, top_p, cfg_scale)
        return sample(class_ids, settings, seed, checks)

    return generate, tf.TensorSpec([None], tf.int32, name="class_ids")


def _unconditional_generate(sample):
    """`generate` of an unconditional prior: num_images int32 [] and scalar settings."""

    def generate(num_images, temperature, top_k, top_p, cfg_scale, seed):
        """num_images int32 [] and scalar settings -> {"tokens", "images"}."""
        count = _check(num_images >= 1, "num_images must be >= 1, got", num_images)
        guidance = _check(
            tf.equal(cfg_scale, 1.0),
            "cfg_scale must be 1: classifier-free guidance needs a class-conditional prior; got",
            cfg_scale,
        )
        class_ids = tf.zeros([_after([count], num_images)], tf.int32)
        settings = SettingTensors(temperature, top_k, top_p, cfg_scale)
        return sample(class_ids, settings, seed, [guidance])

    return generate, _scalar(tf.int32, "num_images")


def prior_endpoints(prior, feature_layer, feature_class_id):
    """generate / features of a trained prior, then its tokenizer's encode / decode / reconstruct.

    Args:
      prior: a `loading.TrainedPrior` (the restored `VIM` network, its stage-1 tokenizer and
        the class dropout it was trained with).
      feature_layer: 1-based block whose token-averaged output `features` returns.
      feature_class_id: the class id fed with the tokens for `features` (the linear probe's:
        the start token of an unconditional prior, the null class of a conditional one).

    Returns:
      list of (name, fn, input_signature); the first is the default.
    """
    network, tokenizer = prior.network, prior.tokenizer
    sample = _sampler(network, tokenizer)
    if prior.num_classes:
        generate, first = _conditional_generate(prior, sample)
    else:
        generate, first = _unconditional_generate(sample)

    def features(images):
        """images uint8 [B, H, W, 3] -> {"features": float32 [B, hidden_dim]}."""
        tokens = tf.reshape(tokenizer.encode(from_uint8(images)), [-1, network.seq_len])
        class_ids = tf.fill(tf.shape(tokens)[:1], tf.constant(feature_class_id, tf.int32))
        out = network.features(tokens, class_ids, layer=feature_layer)
        return {"features": tf.cast(out, tf.float32)}

    size = tokenizer.image_size
    images_spec = tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")
    reconstruct, encode, decode = quantizer_endpoints(tokenizer)
    return [
        ("generate", generate, [first] + _settings_specs()),
        ("features", features, [images_spec]),
        encode,
        decode,
        reconstruct,
    ]


def classifier_endpoints(classifier):
    """scores of an `ImageClassifier`: images float32 [B, H, W, 3] in [0, 1] -> {"features",
    "logits"} (what `ScoringNetwork.from_saved_model` reads)."""
    size = classifier.image_size

    def scores(images):
        return {
            "features": tf.cast(classifier.features(images, training=False), tf.float32),
            "logits": tf.cast(classifier(images, training=False), tf.float32),
        }

    return [("scores", scores, [tf.TensorSpec([None, size, size, 3], tf.float32, name="images")])]


# ----------------------------------------------------------------- model dir -> export
def load_model(model_dir):
    """The inference network of a trained model dir (`vim_tf.models.loading.load_network`):
    nothing of training (discriminator, perceptual network, optimizers) lands in the export.

    Returns:
      (network, model_info dict, checkpoint path).
    """
    return loading.load_network(
        model_dir, model_dir_lib.KINDS, "export.py exports quantizers, priors and classifiers"
    )


def feature_layer(prior, model_dir):
    """The block `features` serves: the probe's best block if `<model_dir>/probe.json` exists,
    else the middle block (`max(1, num_layers // 2)`, `VIM.features`' default).

    Returns:
      (layer, where it came from).
    """
    path = fs.join(model_dir, PROBE_FILE)
    if not fs.exists(path):
        return max(1, prior.num_layers // 2), "default: num_layers // 2 (no probe.json)"
    best = fs.read_json(path).get("best_layer")
    if isinstance(best, bool) or not isinstance(best, int) or not 1 <= best <= prior.num_layers:
        raise ValueError(
            f"{path} has best_layer={best!r}; it must be a block number in "
            f"[1, {prior.num_layers}] (rerun tools/linear_probe.py or remove the file)"
        )
    return best, fs.abspath(path)


def next_version(export_dir):
    """1 + the largest numeric subdir of `export_dir` (1 when there is none)."""
    if not fs.isdir(export_dir):
        return 1
    versions = [
        int(name)
        for name in fs.listdir(export_dir)
        if name.isdigit() and fs.isdir(fs.join(export_dir, name))
    ]
    return max(versions, default=0) + 1


def _describe(fn, specs):
    """{"inputs": {name: {dtype, shape}}, "outputs": {...}} of a traced endpoint."""

    def entry(t):
        return {"dtype": t.dtype.name, "shape": t.shape.as_list()}

    outputs = fn.get_concrete_function().structured_outputs
    return {
        "inputs": {s.name: entry(s) for s in specs},
        "outputs": {k: entry(v) for k, v in sorted(outputs.items())},
    }


def _model_description(model, kind, model_dir):
    """The export_info fields that depend on the kind, and the endpoints."""
    if kind == "quantizer":
        desc = dict(
            image_size=model.image_size,
            grid_size=model.grid_size,
            codebook_size=model.codebook_size,
            num_classes=None,
        )
        return desc, quantizer_endpoints(model)
    if kind == "prior":
        from vim_tf.eval import linear_probe

        if model.tokenizer is None:
            raise ValueError(
                f"the prior in {model_dir!r} has no quantizer (its model_info.json names no "
                "quantizer_dir): an export needs it to turn images into tokens and back"
            )
        layer, source = feature_layer(model.network, model_dir)
        class_id = linear_probe.probe_class_id(model)
        desc = dict(
            image_size=model.tokenizer.image_size,
            grid_size=model.network.grid_size,
            codebook_size=model.network.codebook_size,
            num_classes=model.network.num_classes,
            num_layers=model.network.num_layers,
            feature_layer=layer,
            feature_layer_source=source,
            feature_class_id=class_id,
            quantizer_dir=model.quantizer_dir,
        )
        return desc, prior_endpoints(model, layer, class_id)
    desc = dict(
        image_size=model.image_size,
        grid_size=None,
        codebook_size=None,
        num_classes=model.num_classes,
        feature_dim=model.feature_dim,
    )
    return desc, classifier_endpoints(model)


def export_model_dir(model_dir, export_dir, version=None):
    """Exports the trained model in `model_dir` as the SavedModel `export_dir/<version>/`.

    The SavedModel is written to a temporary dir inside `export_dir` (TF Serving ignores
    non-numeric names) and moved into place (a rename on a local disk), so a crash never leaves a
    half-written version and existing versions are never touched. `export_info.json` beside
    `saved_model.pb` records the kind, sizes, feature layer, signatures and the source model dir
    and checkpoint.

    Args:
      model_dir: a trained quantizer, prior or classifier model dir.
      export_dir: the model base path (as TF Serving's `--model_base_path`); created if needed.
      version: positive int; default: one more than the largest existing version, or 1.

    Returns:
      The written version dir.

    Raises:
      ValueError: an unknown model kind, a bad or existing version, a bad probe.json.
    """
    if version is None:
        version = next_version(export_dir)
    elif isinstance(version, bool) or int(version) != version or version < 1:
        raise ValueError(f"version must be a positive int, got {version!r}")
    version = int(version)
    final = fs.join(export_dir, str(version))
    if fs.exists(final):
        raise ValueError(
            f"{final} exists: versions are never overwritten (omit version for the next one)"
        )
    model, info, checkpoint = load_model(model_dir)
    kind = info["kind"]
    desc, endpoints = _model_description(model, kind, model_dir)

    archive = keras.export.ExportArchive()
    if kind == "prior":
        archive.track(model.network)
        archive.track(model.tokenizer)
    else:
        archive.track(model)
    signatures = {}
    for name, fn, specs in endpoints:
        traced = archive.add_endpoint(name, _with_shape_checks(fn, specs), input_signature=specs)
        signatures[name] = _describe(traced, specs)
    export_info = dict(
        desc,
        kind=kind,
        version=version,
        serving_default=endpoints[0][0],
        signatures=signatures,
        source={
            "model_dir": fs.abspath(model_dir),
            "checkpoint": fs.abspath(checkpoint),
            "step": int(checkpoint.rsplit("-", 1)[-1]),
        },
        tensorflow_version=tf.__version__,
        keras_version=keras.__version__,
    )

    fs.makedirs(export_dir)
    tmp = fs.join(export_dir, f".tmp-{version}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        archive.write_out(tmp, verbose=False)
        model_dir_lib.write_json(fs.join(tmp, EXPORT_INFO_FILE), export_info)
        if fs.exists(final):
            raise ValueError(f"{final} appeared while exporting; not overwriting it")
        fs.move_dir(tmp, final)
    except BaseException:
        fs.rmtree(tmp, ignore_errors=True)
        raise
    logging.info(
        "exported the %s in %s (%s) to %s: signatures %s (serving_default = %s)",
        kind,
        model_dir,
        checkpoint,
        final,
        sorted(signatures),
        endpoints[0][0],
    )
    return final
