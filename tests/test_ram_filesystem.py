"""Every file of a run goes through tf.io.gfile: model dirs on TF's in-memory file system.

`ram://` is not the local disk, and TensorFlow treats it like `gs://`: paths with a scheme, no
`os`/`open` access. The whole pipeline runs in this process on `ram://` dirs (train both stages
and resume, encode token shards, evaluate, sample, export, score the exports) and must leave the
local disk untouched. (A quirk of `ram://`, not of `gs://`: listing a dir also lists siblings
whose names extend it, e.g. `q.json` beside `q/`, so the test gives no two paths such names.)

What is watched:
  - every file and dir under the working directory (the repository; `.git`, `__pycache__` and
    `.pytest_cache` excluded), under this process's test temp dir (the prepared TFDS digits data
    live there and are only read) and under $HOME to depth 2 (size and mtime of each): identical
    before and after;
  - /tmp (shared with other test processes, so not compared): no path may contain this run's
    unique ram:// root name (where a path wrongly made local, e.g. by os.path.abspath, lands);
  - every Python-level write anywhere (audit events of open() for writing, os.mkdir, os.rename,
    os.remove, shutil.rmtree, ...): none may happen while the pipeline runs.
"""

import os
import sys
import tempfile
import uuid

import gin
import numpy as np
import tensorflow as tf

from testcase import TestCase
from tiny import TINY_VIM, train_tiny_quantizer, with_data_dir
from vim_tf.data import digits, tokens
from vim_tf.eval import evaluator, generate
from vim_tf.export import exporter
from vim_tf.training import train_lib
from vim_tf.utils import fs
from vim_tf.utils import model_dir as model_dir_lib

_SKIPPED_DIRS = {".git", "__pycache__", ".pytest_cache"}
_WRITE_EVENTS = {
    "os.mkdir",
    "os.rename",
    "os.remove",
    "os.rmdir",
    "os.truncate",
    "os.link",
    "os.symlink",
    "os.chmod",
    "shutil.rmtree",
    "shutil.move",
    "shutil.copyfile",
    "tempfile.mkstemp",
    "tempfile.mkdtemp",
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class _WriteRecorder:
    """Records Python-level file writes (audit events) while `active`; hooks stay installed for
    the life of the process, so one recorder is shared by every test."""

    active = False
    writes = []
    installed = False

    @classmethod
    def install(cls):
        if not cls.installed:
            sys.addaudithook(cls._hook)
            cls.installed = True

    @classmethod
    def _hook(cls, event, args):
        if not cls.active:
            return
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS
            )
            if writing:
                cls._record(event, path)
        elif event in _WRITE_EVENTS:
            cls._record(event, args[0] if args else "")

    @classmethod
    def _record(cls, event, path):
        path = str(path)
        name = os.path.basename(path)
        # Not this code's doing: byte-compiling a module imported for the first time, and
        # TensorFlow's autograph, which writes each converted function to a temporary module
        # (after probing the temp dir itself) to import it.
        if (
            name.endswith(".pyc")
            or name.startswith("__autograph_generated_file")
            or path == tempfile.gettempdir()
        ):
            return
        cls.writes.append((event, path))


def _snapshot(root, max_depth=None):
    """{relative path: (size, mtime_ns) or 'dir'} of everything under `root`."""
    out = {}
    root = os.path.abspath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        depth = 0 if rel_dir == "." else rel_dir.count(os.sep) + 1
        dirnames[:] = [d for d in dirnames if d not in _SKIPPED_DIRS]
        if max_depth is not None and depth >= max_depth:
            dirnames[:] = []
        for d in dirnames:
            out[os.path.join(rel_dir, d)] = "dir"
        for f in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except FileNotFoundError:  # removed while walking
                continue
            out[os.path.join(rel_dir, f)] = (st.st_size, st.st_mtime_ns)
    return out


def _paths_containing(root, token):
    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
        found += [os.path.join(dirpath, n) for n in dirnames + filenames if token in n]
    return found


class RamFileSystemTest(TestCase):
    def test_pipeline_on_ram_file_system_writes_nothing_locally(self):
        data_dir = self.shared_data_dir()
        digits.load_digits_builder(16, data_dir)  # prepared (written) before watching
        name = f"vim_tf_ram_test_{uuid.uuid4().hex[:12]}"
        root = f"ram://{name}"
        watched = {
            "cwd": (os.getcwd(), None),
            "test temp dir": (tf.compat.v1.test.get_temp_dir(), None),
            "$HOME": (os.path.expanduser("~"), 2),
        }
        before = {k: _snapshot(path, depth) for k, (path, depth) in watched.items()}
        self.addCleanup(lambda: tf.io.gfile.exists(root) and tf.io.gfile.rmtree(root))
        _WriteRecorder.install()
        _WriteRecorder.active = True
        with open(os.devnull, "w"):  # the recorder sees a write
            pass
        self.assertEqual(_WriteRecorder.writes, [("open", os.devnull)])
        _WriteRecorder.writes = []
        try:
            results = self._run_pipeline(root, data_dir)
        finally:
            _WriteRecorder.active = False
            gin.clear_config()
        self.maxDiff = None
        self.assertEqual(sorted(set(_WriteRecorder.writes)), [])
        for key, (path, depth) in watched.items():
            after = _snapshot(path, depth)
            changed = sorted(
                p for p in set(before[key]) | set(after) if before[key].get(p) != after.get(p)
            )
            self.assertEqual(changed, [], msg=f"local files changed under {key} ({path})")
        self.assertEqual(_paths_containing("/tmp", name), [])
        self._check_results(root, results)

    def _run_pipeline(self, root, data_dir):
        q_dir, p_dir = f"{root}/q", f"{root}/p"
        token_dir = f"{root}/tokens"
        r = {"quantizer": train_tiny_quantizer(q_dir, data_dir, steps=2)}
        gin.clear_config()
        r["counts"] = tokens.encode_splits(q_dir, token_dir, batch_size=512)
        gin.clear_config()
        prior_bindings = with_data_dir(
            TINY_VIM, data_dir, "IMAGE_SIZE = 16", f"TOKEN_DIR = '{token_dir}'"
        )
        # Stage 2 on the token shards, then a resume to more steps (from the step-2 checkpoint).
        for steps in (2, 3):
            gin.clear_config()
            r["prior"] = train_lib.run(
                p_dir,
                ["gin/experiments/digits_vim_tokens.gin"],
                [*prior_bindings, f"TRAIN_STEPS = {steps}"],
                quantizer_dir=q_dir,
            )
        gin.clear_config()
        r["q_metrics"] = evaluator.evaluate(q_dir, f"{q_dir}/metrics.json")
        gin.clear_config()
        r["p_metrics"] = evaluator.evaluate(p_dir, f"{p_dir}/metrics.json")
        gin.clear_config()
        r["samples"] = generate.generate(p_dir, f"{root}/samples", num_samples=4, seed=1)
        gin.clear_config()
        r["q_export"] = exporter.export_model_dir(q_dir, f"{root}/export/q")
        gin.clear_config()
        r["p_export"] = exporter.export_model_dir(p_dir, f"{root}/export/p")
        gin.clear_config()
        r["q_served"] = evaluator.evaluate_export(r["q_export"], f"{root}/served_q.json")
        return r

    def _check_results(self, root, r):
        q_dir, p_dir = f"{root}/q", f"{root}/p"
        self.assertEqual(int(r["quantizer"].step), 2)
        self.assertEqual(int(r["prior"].step), 3)
        for d in (q_dir, p_dir):
            names = set(tf.io.gfile.listdir(d))
            for f in ("config.gin", "operative_config.gin", "model_info.json", "checkpoint"):
                self.assertIn(f, names, msg=d)
            self.assertFalse([n for n in names if n.endswith("_temp") or ".tmp-" in n], msg=d)
        # Both runs saved their command line; the resumed prior kept its step-2 checkpoint.
        command = fs.read_text(f"{p_dir}/command.txt")
        self.assertEqual(command.count("\n# "), 1)
        self.assertTrue(tf.io.gfile.exists(f"{p_dir}/ckpt-2.index"))
        self.assertTrue(model_dir_lib.has_checkpoint(q_dir))
        info = model_dir_lib.check_model_dir(p_dir, ("prior",))
        self.assertEqual(info["quantizer_dir"], q_dir)  # kept as given, not made "absolute"
        self.assertEqual(info["train_steps"], 3)

        self.assertEqual(r["counts"], {"train": 1437, "test": 360})
        token_info = tokens.read_token_info(f"{root}/tokens")
        self.assertEqual(token_info["quantizer_dir"], q_dir)
        self.assertEqual(token_info["num_examples"], {"train": 1437, "test": 360})

        # What the functions returned is what they wrote.
        self.assertEqual(fs.read_json(f"{q_dir}/metrics.json")["psnr"], r["q_metrics"]["psnr"])
        self.assertEqual(r["q_metrics"]["reconstruction_grid"], f"{q_dir}/eval_reconstructions.png")
        png = fs.read_bytes(r["q_metrics"]["reconstruction_grid"])
        self.assertEqual(png[:8], b"\x89PNG\r\n\x1a\n")
        self.assertEqual(
            fs.read_json(f"{p_dir}/metrics.json")["nll_bits_per_token"],
            r["p_metrics"]["nll_bits_per_token"],
        )
        saved = fs.load_npz(f"{root}/samples/samples.npz")
        np.testing.assert_array_equal(saved["tokens"], r["samples"]["tokens"])
        np.testing.assert_array_equal(saved["images"], r["samples"]["images"])
        self.assertEqual(saved["images"].shape, (4, 16, 16, 3))
        self.assertTrue(tf.io.gfile.exists(f"{root}/samples/grid.png"))
        # The trainer's image grids.
        self.assertTrue(tf.io.gfile.exists(f"{q_dir}/reconstructions.png"))
        self.assertTrue(tf.io.gfile.exists(f"{p_dir}/samples.png"))

        self.assertEqual(r["q_export"], f"{root}/export/q/1")
        self.assertEqual(sorted(tf.io.gfile.listdir(f"{root}/export/q")), ["1"])
        export_info = fs.read_json(f"{r['p_export']}/export_info.json")
        self.assertEqual(export_info["source"]["model_dir"], p_dir)
        self.assertEqual(export_info["source"]["checkpoint"], f"{p_dir}/ckpt-3")
        self.assertTrue(tf.io.gfile.exists(f"{r['p_export']}/saved_model.pb"))
        self.assertTrue(tf.io.gfile.exists(f"{r['p_export']}/variables/variables.index"))
        self.assertEqual(r["q_served"]["saved_model"], r["q_export"])
        # The export serves the model dir's quantizer: the same codes on the same images.
        self.assertAllClose(
            r["q_served"]["codebook_usage"], r["q_metrics"]["codebook_usage"], rtol=1e-6
        )
        self.assertEqual(fs.read_json(f"{root}/served_q.json"), r["q_served"])
