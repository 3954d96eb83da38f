"""Export: tiny quantizer, priors and classifier -> versioned SavedModels, loaded without vim_tf.

setUpClass trains the models, exports them, computes in-process references, and runs one
subprocess that never imports vim_tf: it loads every export with `tf.saved_model.load`,
`tensorflow_hub.load` and `keras.layers.TFSMLayer`, runs every signature and every bad input,
and hands back its outputs (an npz) and the error messages (JSON on stdout).
"""

import contextlib
import io
import json
import os
import subprocess
import sys
import types
from unittest import mock

import gin
import numpy as np
import tensorflow as tf

from testcase import TestCase
from tiny import TINY_CLASSIFIER, TINY_VIM, tiny_vitvqgan_bindings, with_data_dir
from vim_tf.eval import networks
from vim_tf.eval.scores import ScoringNetwork
from vim_tf.export import exporter
from vim_tf.models import loading
from vim_tf.sampling.sampler import Sampler
from vim_tf.sampling.settings import SamplingSettings
from vim_tf.training import train_lib
from vim_tf.utils import images as image_utils

SIZE, GRID, CODES, CLASSES = 16, 4, 16, 10

# (name, inputs, settings (temperature, top_k, top_p, cfg_scale, seed)); "class_ids" for the
# class-conditional prior, "num_images" for the unconditional one.
GENERATE_CASES = [
    ("plain", {"class_ids": [3, 7, 1, 0]}, (0.9, 5, 0.95, 1.0, 5)),
    ("guided", {"class_ids": [2, 2, 9]}, (1.0, 0, 1.0, 2.5, 1)),
    ("big_seed", {"class_ids": [4]}, (1.3, 3, 1.0, 1.0, 3000)),
    ("uncond", {"num_images": 3}, (1.0, 0, 0.9, 1.0, 2)),
]

# name -> (export, signature, inputs overriding the valid ones, error type, substrings).
BAD_INPUTS = {
    "token_ids_out_of_range": ("q", "decode", {"tokens": "bad_tokens"}, "Invalid", ["99", "-7"]),
    "tokens_wrong_rank": (
        "q",
        "decode",
        {"tokens": "tokens_rank2"},
        "Invalid",
        ["tokens [2,16]", "expected shape [?,4,4]"],
    ),
    "images_wrong_dtype": ("q", "encode", {"images": "images_float"}, "Invalid", ["uint8"]),
    "images_wrong_size": (
        "q",
        "encode",
        {"images": "images_8px"},
        "Invalid",
        ["[1,8,8,3]", "[?,16,16,3]"],
    ),
    "class_id_too_big": ("p", "generate", {"class_ids": [1, 42]}, "Invalid", ["[0, 10)", "42"]),
    "class_id_negative": ("p", "generate", {"class_ids": [-3]}, "Invalid", ["-3"]),
    "no_class_ids": ("p", "generate", {"class_ids": []}, "Invalid", ["at least one"]),
    "temperature_negative": ("p", "generate", {"temperature": -0.5}, "Invalid", ["> 0", "-0.5"]),
    "temperature_nan": ("p", "generate", {"temperature": float("nan")}, "Invalid", ["nan"]),
    "top_k_negative": ("p", "generate", {"top_k": -3}, "Invalid", [">= 0", "-3"]),
    "top_p_above_one": ("p", "generate", {"top_p": 1.5}, "Invalid", ["(0, 1]", "1.5"]),
    "top_p_zero": ("p", "generate", {"top_p": 0.0}, "Invalid", ["(0, 1]", "got] [0]"]),
    "cfg_scale_negative": ("p", "generate", {"cfg_scale": -2.5}, "Invalid", ["-2.5"]),
    "scalar_as_vector": (
        "p",
        "generate",
        {"seed": [1]},
        "Invalid",
        ["seed [1]", "expected shape []"],
    ),
    "num_images_negative": ("u", "generate", {"num_images": -4}, "Invalid", [">= 1", "-4"]),
    "num_images_zero": ("u", "generate", {"num_images": 0}, "Invalid", ["got] [0]"]),
    "uncond_guidance": ("u", "generate", {"cfg_scale": 3.0}, "Invalid", ["class-conditional", "3"]),
    "scores_wrong_dtype": ("c", "scores", {"images": "images"}, "Invalid", ["float"]),
}

# Runs in a fresh interpreter: no vim_tf import, only TensorFlow, Keras and tensorflow_hub.
SUBPROCESS_CODE = r"""
import json, sys
import numpy as np
import tensorflow as tf
import keras
import tensorflow_hub as hub

cfg = json.loads(sys.argv[1])
data = dict(np.load(cfg["inputs"]))
out, result = {}, {"signatures": {}, "bad": {}}
loaded = {k: tf.saved_model.load(p) for k, p in cfg["exports"].items()}
for k, m in loaded.items():
    result["signatures"][k] = sorted(m.signatures)

DTYPES = {"images": tf.uint8, "tokens": tf.int32, "class_ids": tf.int32, "num_images": tf.int32,
          "temperature": tf.float32, "top_k": tf.int32, "top_p": tf.float32,
          "cfg_scale": tf.float32, "seed": tf.int32}

def call(model, signature, **inputs):
    fn = model.signatures[signature]
    args = {}
    for k, v in inputs.items():
        v = data[v] if isinstance(v, str) else v
        dtype = v.dtype if isinstance(v, np.ndarray) else DTYPES[k]
        args[k] = tf.constant(v, dtype)
    return {k: v.numpy() for k, v in fn(**args).items()}

def save(prefix, outputs):
    for k, v in outputs.items():
        out[f"{prefix}/{k}"] = v

def settings(t, k, p, g, s):
    return dict(temperature=t, top_k=k, top_p=p, cfg_scale=g, seed=s)

# Every signature of every export.
q, p, u, c = (loaded[k] for k in "qpuc")
for name, model in (("q", q), ("p", p), ("u", u)):
    save(f"{name}/encode", call(model, "encode", images="images"))
    save(f"{name}/decode", call(model, "decode", tokens=out[f"{name}/encode/tokens"]))
    save(f"{name}/reconstruct", call(model, "reconstruct", images="images"))
save("q/serving_default", call(q, "serving_default", images="images"))
for name, model in (("p", p), ("u", u)):
    save(f"{name}/features", call(model, "features", images="images"))
for case, inputs, s in cfg["generate"]:
    model = u if "num_images" in inputs else p
    save(f"generate/{case}", call(model, "generate", **inputs, **settings(*s)))
case, inputs, s = cfg["generate"][0]
save("p/serving_default", call(p, "serving_default", **inputs, **settings(*s)))
# The endpoint functions themselves (not the signatures) take their inputs by keyword too.
kw = {k: tf.constant(v, DTYPES[k]) for k, v in dict(inputs, **settings(*s)).items()}
out["fn/generate/tokens"] = p.generate(**kw)["tokens"].numpy()
save("c/scores", call(c, "scores", images="images_float"))
save("c/serving_default", call(c, "serving_default", images="images_float"))

# tensorflow_hub.load: signatures and the endpoint functions.
h = hub.load(cfg["exports"]["q"])
result["hub_signatures"] = sorted(h.signatures)
images = tf.constant(data["images"])
out["hub/encode/tokens"] = h.signatures["encode"](images=images)["tokens"].numpy()
out["hub/reconstruct/images"] = h.reconstruct(images)["images"].numpy()

# keras.layers.TFSMLayer inside Keras 3 models: tokens, and a trainable head on the features.
images_in = keras.Input((cfg["image_size"], cfg["image_size"], 3), dtype="uint8")
tokens = keras.layers.TFSMLayer(cfg["exports"]["q"], call_endpoint="encode")(images_in)["tokens"]
out["tfsm/encode/tokens"] = keras.Model(images_in, tokens).predict(data["images"], verbose=0)
feats = keras.layers.TFSMLayer(cfg["exports"]["p"], call_endpoint="features", trainable=False)(
    images_in)["features"]
head = keras.Model(images_in, [feats, keras.layers.Dense(10)(feats)])
f, logits = head.predict(data["images"], verbose=0)
out["tfsm/features/features"], result["tfsm_head_logits_shape"] = f, list(logits.shape)

# Bad inputs: every case replaces some valid inputs of a signature.
valid = {"q": {"encode": {"images": "images"}, "decode": {"tokens": out["q/encode/tokens"]}},
         "p": {"generate": dict(cfg["generate"][0][1], **settings(*cfg["generate"][0][2]))},
         "u": {"generate": dict(num_images=2, **settings(1.0, 0, 1.0, 1.0, 0))},
         "c": {"scores": {"images": "images_float"}}}
for case, (model, signature, bad) in cfg["bad"].items():
    try:
        call(loaded[model], signature, **dict(valid[model][signature], **bad))
        result["bad"][case] = {"type": None, "message": ""}
    except Exception as e:
        result["bad"][case] = {"type": type(e).__name__, "message": str(e)}
# The endpoint function (not the signature) refuses a wrong dtype before running.
try:
    q.encode(tf.constant(data["images_float"]))
    result["bad"]["function_wrong_dtype"] = {"type": None, "message": ""}
except Exception as e:
    result["bad"]["function_wrong_dtype"] = {"type": type(e).__name__, "message": str(e)}

np.savez(cfg["outputs"], **out)
result["vim_tf_modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "vim_tf")
print("RESULT:" + json.dumps(result))
"""


def _train(model_dir, gin_file, bindings, quantizer_dir=None):
    gin.clear_config()
    train_lib.run(model_dir, [gin_file], bindings, quantizer_dir=quantizer_dir)
    gin.clear_config()


class ExportTest(TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        root = cls.root = cls.class_temp_dir()
        data_dir = cls.shared_data_dir()
        cls.dirs = {k: os.path.join(root, k) for k in "qpuc"}
        _train(
            cls.dirs["q"],
            "gin/experiments/digits_vitvqgan.gin",
            tiny_vitvqgan_bindings(
                data_dir, "TRAIN_STEPS = 2", "VQGANTraining.disc_start_step = 10"
            ),
        )
        prior = ("IMAGE_SIZE = 16", "TRAIN_STEPS = 2", "train.image_every = 100")
        _train(
            cls.dirs["p"],
            "gin/experiments/digits_vim.gin",
            with_data_dir(
                TINY_VIM,
                data_dir,
                *prior,
                "VIM.num_layers = 2",
                "PriorTraining.class_dropout = 0.1",
            ),
            quantizer_dir=cls.dirs["q"],
        )
        _train(
            cls.dirs["u"],
            "gin/experiments/digits_vim_uncond.gin",
            with_data_dir(TINY_VIM, data_dir, *prior),
            quantizer_dir=cls.dirs["q"],
        )
        _train(
            cls.dirs["c"],
            "gin/experiments/digits_classifier.gin",
            with_data_dir(TINY_CLASSIFIER, data_dir, "TRAIN_STEPS = 2"),
        )
        # The probe's best block becomes the conditional prior's feature layer.
        with open(os.path.join(cls.dirs["p"], exporter.PROBE_FILE), "w") as f:
            json.dump({"best_layer": 2, "layers": {"1": 0.5, "2": 0.6}}, f)

        cls.exports = {}
        for k, d in cls.dirs.items():
            gin.clear_config()
            cls.exports[k] = exporter.export_model_dir(d, os.path.join(root, "export", k))
        cls._references()
        cls._run_subprocess()
        cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
        cls.cli = subprocess.run(
            [cli, "show", "--dir", cls.exports["p"], "--all"],
            capture_output=True,
            text=True,
            timeout=300,
        )

    @classmethod
    def _references(cls):
        """Inputs for the subprocess, and what the in-process models give for them."""
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(5, SIZE, SIZE, 3), dtype=np.uint8)
        cls.inputs = {
            "images": images,
            "images_float": (images / 255.0).astype(np.float32),
            "images_8px": images[:1, :8, :8],
            "bad_tokens": np.array([[[99, 0, 0, 0]] * GRID, [[0, -7, 0, 0]] * GRID], np.int32),
            "tokens_rank2": np.zeros([2, GRID * GRID], np.int32),
        }
        x = tf.constant(cls.inputs["images_float"])
        ref = cls.ref = {}
        gin.clear_config()
        quantizer, _, _ = exporter.load_model(cls.dirs["q"])
        ref["q/tokens"] = quantizer.encode(x).numpy()
        ref["q/images"] = image_utils.to_uint8(quantizer.decode(ref["q/tokens"]))
        priors = {}
        for k in "pu":
            gin.clear_config()
            priors[k] = prior = loading.load_network(cls.dirs[k])[0]
            model = prior.network
            tokens = prior.tokenize({"image": x})
            class_ids = tf.fill([len(images)], model.null_class if model.num_classes else 0)
            layer = 2 if k == "p" else 1
            ref[f"{k}/features"] = model.features(tokens, class_ids, layer=layer).numpy()
        for case, inputs, (t, top_k, top_p, cfg_scale, seed) in GENERATE_CASES:
            model = priors["u" if "num_images" in inputs else "p"]
            class_ids = inputs.get("class_ids", [0] * inputs.get("num_images", 0))
            tokens, sampled = Sampler.of_trained_prior(model).sample(
                np.asarray(class_ids, np.int32), seed, SamplingSettings(t, top_k, top_p, cfg_scale)
            )
            ref[f"generate/{case}/tokens"] = tokens
            ref[f"generate/{case}/images"] = image_utils.to_uint8(sampled)
        gin.clear_config()
        classifier = loading.load_classifier(cls.dirs["c"])
        ref["c/logits"] = classifier(x, training=False).numpy()
        ref["c/features"] = classifier.features(x).numpy()
        cls.keras_scores = ScoringNetwork.from_keras(classifier, name="in_process").activations(
            cls.inputs["images_float"]
        )

    @classmethod
    def _run_subprocess(cls):
        inputs = os.path.join(cls.root, "sub_inputs.npz")
        outputs = os.path.join(cls.root, "sub_outputs.npz")
        np.savez(inputs, **cls.inputs)
        config = {
            "exports": cls.exports,
            "inputs": inputs,
            "outputs": outputs,
            "image_size": SIZE,
            "generate": GENERATE_CASES,
            "bad": {k: v[:3] for k, v in BAD_INPUTS.items()},
        }
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        proc = subprocess.run(
            [sys.executable, "-c", SUBPROCESS_CODE, json.dumps(config)],
            capture_output=True,
            text=True,
            cwd=cls.root,
            env=env,
            timeout=600,
        )
        lines = [s for s in proc.stdout.splitlines() if s.startswith("RESULT:")]
        if proc.returncode != 0 or not lines:
            raise AssertionError(
                f"the loading subprocess failed ({proc.returncode}):\n{proc.stderr[-5000:]}"
            )
        cls.result = json.loads(lines[-1][len("RESULT:") :])
        cls.out = dict(np.load(outputs))

    def test_subprocess_never_imported_vim_tf(self):
        self.assertEqual(self.result["vim_tf_modules"], [])

    def test_signatures(self):
        quantizer = ["decode", "encode", "reconstruct", "serving_default"]
        sigs = self.result["signatures"]
        self.assertEqual(sigs["q"], quantizer)
        self.assertEqual(sigs["p"], sorted(quantizer + ["features", "generate"]))
        self.assertEqual(sigs["u"], sigs["p"])
        self.assertEqual(sigs["c"], ["scores", "serving_default"])
        self.assertEqual(self.result["hub_signatures"], quantizer)
        # saved_model_cli lists every signature with its named inputs.
        self.assertEqual(self.cli.returncode, 0, msg=self.cli.stderr[-3000:])
        for name in sigs["p"]:
            self.assertIn(f"signature_def['{name}']", self.cli.stdout)
        for name in ("class_ids", "temperature", "top_k", "top_p", "cfg_scale", "seed"):
            self.assertIn(f"inputs['{name}']", self.cli.stdout)

    def test_quantizer_signatures(self):
        out = self.out
        # In-process encoder, and decode(encode(x)) == reconstruct(x) within the export.
        self.assertAllEqual(out["q/encode/tokens"], self.ref["q/tokens"])
        self.assertAllEqual(out["q/reconstruct/tokens"], out["q/encode/tokens"])
        self.assertAllEqual(out["q/reconstruct/images"], out["q/decode/images"])
        self.assertAllEqual(out["q/serving_default/images"], out["q/reconstruct/images"])
        self.assertEqual(out["q/decode/images"].dtype, np.uint8)
        self.assertEqual(out["q/decode/images"].shape, (5, SIZE, SIZE, 3))
        self.assertAllEqual(out["q/decode/images"], self.ref["q/images"])
        # A prior's export carries its quantizer.
        for k in "pu":
            self.assertAllEqual(out[f"{k}/encode/tokens"], out["q/encode/tokens"])
            self.assertAllEqual(out[f"{k}/reconstruct/images"], out["q/reconstruct/images"])
            self.assertAllEqual(out[f"{k}/decode/images"], out["q/decode/images"])
        # tensorflow_hub.load and a TFSMLayer in a Keras 3 model give the same.
        self.assertAllEqual(out["hub/encode/tokens"], out["q/encode/tokens"])
        self.assertAllEqual(out["hub/reconstruct/images"], out["q/reconstruct/images"])
        self.assertAllEqual(out["tfsm/encode/tokens"], out["q/encode/tokens"])

    def test_generate_matches_sampler(self):
        for case, inputs, _ in GENERATE_CASES:
            with self.subTest(case):
                tokens = self.out[f"generate/{case}/tokens"]
                n = len(inputs.get("class_ids", [])) or inputs["num_images"]
                self.assertEqual(tokens.shape, (n, GRID, GRID))
                self.assertAllEqual(tokens, self.ref[f"generate/{case}/tokens"])
                images = self.out[f"generate/{case}/images"]
                self.assertEqual(images.dtype, np.uint8)
                self.assertAllEqual(images, self.ref[f"generate/{case}/images"])
        self.assertAllEqual(self.out["p/serving_default/tokens"], self.out["generate/plain/tokens"])
        self.assertAllEqual(self.out["fn/generate/tokens"], self.out["generate/plain/tokens"])
        # Guidance is its own branch: the same seed gives other tokens than without it.
        self.assertNotAllEqual(
            self.out["generate/guided/tokens"][:1], self.out["generate/plain/tokens"][:1]
        )

    def test_features(self):
        for k in "pu":
            self.assertAllClose(
                self.out[f"{k}/features/features"], self.ref[f"{k}/features"], atol=1e-5
            )
        self.assertAllClose(self.out["tfsm/features/features"], self.ref["p/features"], atol=1e-5)
        self.assertEqual(self.result["tfsm_head_logits_shape"], [5, 10])

    def test_classifier_scores(self):
        self.assertAllClose(self.out["c/scores/logits"], self.ref["c/logits"], atol=1e-5)
        self.assertAllClose(self.out["c/scores/features"], self.ref["c/features"], atol=1e-5)
        self.assertAllEqual(self.out["c/serving_default/logits"], self.out["c/scores/logits"])
        # The format the evaluator reads for --classifier=<SavedModel dir>.
        network = ScoringNetwork.from_saved_model(self.exports["c"])
        self.assertEqual(network.image_size, (SIZE, SIZE))
        features, logits = network.activations(self.inputs["images_float"])
        self.assertAllClose(features, self.keras_scores[0], atol=1e-5)
        self.assertAllClose(logits, self.keras_scores[1], atol=1e-5)
        self.assertIn("saved_model:", networks.load_scoring_network(self.exports["c"]).name)

    def test_bad_inputs_fail_with_the_bad_value(self):
        for case, (_, _, _, kind, substrings) in BAD_INPUTS.items():
            with self.subTest(case):
                got = self.result["bad"][case]
                self.assertIsNotNone(got["type"], msg=f"{case} was accepted")
                if kind == "Invalid":
                    self.assertEqual(got["type"], "InvalidArgumentError", msg=got["message"])
                for s in substrings:
                    self.assertIn(s, got["message"])
        self.assertEqual(self.result["bad"]["function_wrong_dtype"]["type"], "TypeError")

    def test_export_info(self):
        def info(k):
            with open(os.path.join(self.exports[k], exporter.EXPORT_INFO_FILE)) as f:
                return json.load(f)

        p = info("p")
        self.assertEqual(p["kind"], "prior")
        self.assertEqual(
            (p["image_size"], p["grid_size"], p["codebook_size"], p["num_classes"]),
            (SIZE, GRID, CODES, CLASSES),
        )
        self.assertEqual(p["feature_layer"], 2)
        self.assertEqual(p["feature_layer_source"], os.path.join(self.dirs["p"], "probe.json"))
        self.assertEqual(p["feature_class_id"], CLASSES)  # the null class, never a label
        self.assertEqual(p["serving_default"], "generate")
        self.assertEqual(
            sorted(p["signatures"]), ["decode", "encode", "features", "generate", "reconstruct"]
        )
        self.assertEqual(p["signatures"]["generate"]["outputs"]["tokens"]["shape"], [None, 4, 4])
        self.assertEqual(p["signatures"]["features"]["outputs"]["features"]["shape"], [None, 16])
        self.assertEqual(p["source"]["model_dir"], os.path.abspath(self.dirs["p"]))
        self.assertTrue(tf.io.gfile.exists(p["source"]["checkpoint"] + ".index"))
        self.assertEqual(p["source"]["step"], 2)
        u = info("u")
        self.assertEqual((u["num_classes"], u["feature_layer"], u["feature_class_id"]), (0, 1, 0))
        self.assertIn("no probe.json", u["feature_layer_source"])
        self.assertIn("num_images", u["signatures"]["generate"]["inputs"])
        self.assertEqual(info("q")["serving_default"], "reconstruct")
        self.assertEqual(info("q")["num_classes"], None)
        c = info("c")
        self.assertEqual(
            (c["kind"], c["serving_default"], c["num_classes"]), ("classifier", "scores", 10)
        )

    def test_versions_are_new_dirs_and_crashes_leave_nothing(self):
        base = os.path.join(self.get_temp_dir(), "versions")
        os.makedirs(os.path.join(base, "junk"))
        os.makedirs(os.path.join(base, ".tmp-stale"))
        c = self.dirs["c"]
        self.assertEqual(exporter.export_model_dir(c, base), os.path.join(base, "1"))
        self.assertEqual(exporter.export_model_dir(c, base), os.path.join(base, "2"))
        self.assertEqual(exporter.export_model_dir(c, base, version=7), os.path.join(base, "7"))
        self.assertEqual(exporter.next_version(base), 8)
        with self.assertRaisesRegex(ValueError, "exists: versions are never overwritten"):
            exporter.export_model_dir(c, base, version=2)
        with self.assertRaisesRegex(ValueError, "version must be a positive int, got 0"):
            exporter.export_model_dir(c, base, version=0)
        before = {v: os.stat(os.path.join(base, v, "saved_model.pb")).st_mtime_ns for v in "12"}
        # A crash after the SavedModel is written: no version 8, no temporary dir left behind.
        with mock.patch.object(
            exporter.model_dir_lib, "write_json", side_effect=RuntimeError("disk full")
        ):
            with self.assertRaisesRegex(RuntimeError, "disk full"):
                exporter.export_model_dir(c, base)
        self.assertEqual(sorted(os.listdir(base)), [".tmp-stale", "1", "2", "7", "junk"])
        after = {v: os.stat(os.path.join(base, v, "saved_model.pb")).st_mtime_ns for v in "12"}
        self.assertEqual(before, after)
        self.assertEqual(exporter.export_model_dir(c, base), os.path.join(base, "8"))

    def test_feature_layer_and_kind_errors(self):
        prior = types.SimpleNamespace(num_layers=4)
        d = self.get_temp_dir()
        self.assertEqual(exporter.feature_layer(prior, d)[0], 2)
        self.assertEqual(exporter.feature_layer(types.SimpleNamespace(num_layers=1), d)[0], 1)
        with open(os.path.join(d, "probe.json"), "w") as f:
            json.dump({"best_layer": 7}, f)
        with self.assertRaisesRegex(
            ValueError, r"best_layer=7; it must be a block number in \[1, 4\]"
        ):
            exporter.feature_layer(prior, d)
        with open(os.path.join(d, "model_info.json"), "w") as f:
            json.dump({"kind": "discriminator"}, f)
        with self.assertRaisesRegex(ValueError, "holds a 'discriminator' model"):
            exporter.export_model_dir(d, os.path.join(d, "out"))
        self.assertFalse(os.path.exists(os.path.join(d, "out", "1")))

    def test_tool(self):
        from vim_tf.bin import export as tool  # tools/export.py, vim-export

        out_dir = os.path.join(self.get_temp_dir(), "tool_export")
        tool.FLAGS(["export.py", f"--model_dir={self.dirs['c']}", f"--export_dir={out_dir}"])
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            tool.main([])
        self.assertEqual(printed.getvalue().strip(), os.path.join(out_dir, "1"))
        self.assertTrue(os.path.exists(os.path.join(out_dir, "1", "saved_model.pb")))


class GuidanceRefusalTest(TestCase):
    """The served generate signature refuses guidance where tools/sample.py does (no training)."""

    def _generate(self, class_dropout):
        from vim_tf.models.loading import TrainedPrior
        from vim_tf.models.vim import VIM
        from vim_tf.models.vitvqgan import ViTVQGAN

        stack = {"num_layers": 1, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}
        network = VIM(**stack, grid_size=GRID, codebook_size=CODES, dropout=0.0, num_classes=3)
        tokenizer = ViTVQGAN(
            image_size=SIZE,
            patch_size=SIZE // GRID,
            encoder=stack,
            decoder=stack,
            codebook_size=CODES,
            code_dim=4,
        )
        tokenizer.build()
        network.build()
        prior = TrainedPrior(network, tokenizer, class_dropout=class_dropout)
        fns = {name: fn for name, fn, _ in exporter.prior_endpoints(prior, 1, 3)}
        return lambda cfg_scale: fns["generate"](
            tf.constant([0, 2]),
            tf.constant(1.0),
            tf.constant(0),
            tf.constant(1.0),
            tf.constant(cfg_scale),
            tf.constant(4),
        )

    def test_guidance_needs_class_dropout(self):
        generate_fn = self._generate(class_dropout=0.0)
        self.assertEqual(generate_fn(1.0)["tokens"].shape, (2, GRID, GRID))
        with self.assertRaisesRegex(
            tf.errors.InvalidArgumentError, r"PriorTraining.class_dropout > 0(.|\n)*got(.|\n)*\b2\b"
        ):
            generate_fn(2.0)
        # Trained with class dropout: the same call is served.
        tokens = self._generate(class_dropout=0.1)(2.0)["tokens"].numpy()
        self.assertEqual(tokens.shape, (2, GRID, GRID))
        self.assertTrue(((tokens >= 0) & (tokens < CODES)).all())


if __name__ == "__main__":
    tf.test.main()
