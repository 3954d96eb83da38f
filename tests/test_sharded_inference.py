"""Inference spread over replicas and workers, in resumable shards (sample, encode, evaluate).

- The sampler's draws are numbered by batch row: a replica sampling rows [o, o + b) of a batch
  draws what one device sampling the whole batch draws for them.
- `ShardSet`: shard bounds, worker shares, refusal of another run's dir, --overwrite.
- 1 device vs a 2-replica MirroredStrategy: identical sample and token files (subprocess).
- kill -9 of `tools/sample.py` and `tools/encode.py` mid-run, rerun: the files of an
  uninterrupted run, byte for byte.
- `tools/sample.py --strategy=multi_worker` on two local processes: the files of one process.
- Sharded evaluation: resumed scores equal uninterrupted ones.
"""

import json
import os
import signal
import subprocess
import sys
import time

import gin
import numpy as np
import tensorflow as tf

from testcase import TestCase
from tiny import TINY_CLASSIFIER, TINY_VIM, train_tiny_quantizer, with_data_dir
from vim_tf.data import tokens
from vim_tf.eval import evaluator, generate
from vim_tf.models import loading
from vim_tf.sampling import decoding
from vim_tf.sampling.settings import SamplingSettings
from vim_tf.training import train_lib
from vim_tf.utils import fs, shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Seconds for one subprocess run; a hang fails the test instead of blocking CI.
TIMEOUT = 300


def _tree(root):
    """{relative path: bytes} of every file under root."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _differing(a, b):
    """Names of the files that differ between two `_tree`s (or exist in only one)."""
    return sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n))


def _tail(text, lines=30):
    return "\n".join(text.splitlines()[-lines:])


class ShardSetTest(TestCase):
    def test_bounds_and_worker_shares(self):
        s = shards.ShardSet("ram://shards/a", "samples", ".npz", 10, 4, {"seed": 1})
        self.assertEqual(s.num_shards, 3)
        self.assertEqual([s.bounds(i) for i in range(3)], [(0, 4), (4, 8), (8, 10)])
        self.assertEqual(s.name(2), "samples-00002-of-00003.npz")
        w1 = shards.ShardSet("ram://shards/a", "samples", ".npz", 10, 4, {}, 1, 2)
        self.assertEqual(w1.my_shards(), [1])
        with self.assertRaisesRegex(ValueError, "worker_index 2 is not in"):
            shards.ShardSet("ram://shards/a", "samples", ".npz", 10, 4, {}, 2, 2)

    def test_resume_refusal_and_overwrite(self):
        root = "ram://shards/b"
        s = shards.ShardSet(root, "x", ".bin", 5, 2, {"seed": 1, "ids": (1, 2)})
        self.assertEqual(s.open(), 0)
        s.write(0, lambda p: fs.write_bytes(p, b"zero"))
        fs.write_bytes(s.path(1) + ".tmp-0", b"half")  # a killed writer's leftover
        with self.assertRaisesRegex(ValueError, "cannot finish .*missing"):
            s.finish()
        again = shards.ShardSet(root, "x", ".bin", 5, 2, {"seed": 1, "ids": [1, 2]})
        self.assertEqual(again.open(), 1)  # tuples and lists are the same run
        self.assertEqual(again.pending(), [1, 2])
        self.assertFalse(fs.exists(s.path(1) + ".tmp-0"))
        other = shards.ShardSet(root, "x", ".bin", 5, 2, {"seed": 2, "ids": [1, 2]})
        with self.assertRaisesRegex(ValueError, r"another run \(seed: 1 there, 2 now\)"):
            other.open()
        self.assertEqual(other.open(overwrite=True), 0)
        self.assertFalse(fs.exists(s.path(0)))
        self.assertEqual(fs.read_json(other.manifest_path)["params"]["seed"], 2)


class ShardedInferenceTest(TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        root = cls.class_temp_dir()
        cls.data_dir = cls.shared_data_dir()
        cls.q_dir = os.path.join(root, "quantizer")
        train_tiny_quantizer(cls.q_dir, cls.data_dir)
        cls.p_dir = os.path.join(root, "prior")
        gin.clear_config()
        train_lib.run(
            cls.p_dir,
            ["gin/experiments/digits_vim.gin"],
            with_data_dir(TINY_VIM, cls.data_dir, "IMAGE_SIZE = 16"),
            quantizer_dir=cls.q_dir,
        )
        gin.clear_config()

    def test_replica_rows_draw_what_one_device_draws(self):
        prior = loading.load_prior(self.p_dir)
        ids = tf.constant([0, 1, 2, 3, 4, 5], tf.int32)
        settings = SamplingSettings()
        whole = decoding.sample_tokens(prior.network, ids, 7, settings).numpy()
        parts = [
            decoding.sample_tokens(prior.network, ids[o : o + 2], 7, settings, row_offset=o)
            for o in (0, 2, 4)
        ]
        np.testing.assert_array_equal(np.concatenate([p.numpy() for p in parts]), whole)
        # Without the offset the rows of a later replica would repeat the first rows' draws.
        shifted = decoding.sample_tokens(prior.network, ids[2:4], 7, settings).numpy()
        self.assertFalse(np.array_equal(shifted, whole[2:4]))

    def test_sharded_samples_resume_and_match_the_batch_sampler(self):
        root = self.get_temp_dir()
        run = dict(batch_size=4, shard_size=8, seed=3, return_arrays=True)
        full = generate.generate(self.p_dir, os.path.join(root, "full"), 18, **run)
        self.assertEqual(full["images"].shape, (18, 16, 16, 3))
        names = sorted(os.listdir(os.path.join(root, "full")))
        self.assertEqual(
            names,
            ["grid.png", "samples-00000-of-00003.npz", "samples-00001-of-00003.npz"]
            + ["samples-00002-of-00003.npz", "samples.npz", "samples_manifest.json"],
        )
        manifest = fs.read_json(os.path.join(root, "full", "samples_manifest.json"))
        self.assertTrue(manifest["complete"])
        self.assertEqual(manifest["params"]["checkpoint"], "ckpt-4")
        # The same samples as the in-memory batch sampler (batch b with batch seed b).
        from vim_tf.sampling.sampler import Sampler, class_plan

        sampler = Sampler.of_trained_prior(loading.load_prior(self.p_dir))
        plan = class_plan(18, 10)
        tokens_ref, _ = sampler.sample(plan, 3, SamplingSettings(), 4)
        np.testing.assert_array_equal(full["tokens"], tokens_ref)
        np.testing.assert_array_equal(full["class_ids"], plan)
        # A run that stopped after its first shard (the others never written) resumes.
        part = os.path.join(root, "part")
        generate.generate(self.p_dir, part, 18, **run)
        for name in ("samples-00001-of-00003.npz", "samples-00002-of-00003.npz", "samples.npz"):
            os.remove(os.path.join(part, name))
        with open(os.path.join(part, "samples-00001-of-00003.npz.tmp-0"), "wb") as f:
            f.write(b"cut short")
        generate.generate(self.p_dir, part, 18, **run)
        self.assertEqual(_differing(_tree(part), _tree(os.path.join(root, "full"))), [])
        with self.assertRaisesRegex(ValueError, r"seed: 3 there, 4 now.*--overwrite"):
            generate.generate(self.p_dir, part, 18, **dict(run, seed=4))
        with self.assertRaisesRegex(ValueError, "multiple of batch_size 4"):
            generate.generate(self.p_dir, part, 18, **dict(run, shard_size=6))

    def test_incomplete_token_dir_is_refused(self):
        token_dir = self.get_temp_dir()
        gin.clear_config()
        tokens.encode_splits(self.q_dir, token_dir, splits=("test",), examples_per_shard=100)
        names = sorted(n for n in os.listdir(token_dir) if n.endswith(".tfrecord"))
        self.assertEqual(names, [f"test-0000{i}-of-00004.tfrecord" for i in range(4)])
        self.assertEqual(tokens.read_token_info(token_dir)["num_examples"], {"test": 360})
        manifest = os.path.join(token_dir, "test_manifest.json")
        data = fs.read_json(manifest)
        fs.write_json(manifest, dict(data, complete=False))
        os.remove(os.path.join(token_dir, names[-1]))
        with self.assertRaisesRegex(ValueError, r"incomplete \(3 of 4 shards\).*rerun"):
            tokens.make_token_dataset(token_dir=token_dir, split="test", batch_size=8)

    def test_sharded_evaluation_resumes_with_the_same_scores(self):
        c_dir = os.path.join(self.get_temp_dir(), "classifier")
        gin.clear_config()
        train_lib.run(
            c_dir,
            ["gin/experiments/digits_classifier.gin"],
            with_data_dir(TINY_CLASSIFIER, self.data_dir),
        )
        root = self.get_temp_dir()
        shard_dir = os.path.join(root, "acts")

        def evaluate(output):
            gin.clear_config()
            return evaluator.evaluate(
                self.p_dir, os.path.join(root, output), c_dir, 30, shard_dir=shard_dir
            )

        first = evaluate("a.json")
        self.assertEqual(first["num_samples"], 30)
        acts = sorted(n for n in os.listdir(shard_dir) if n.endswith(".npz"))
        self.assertLen(acts, 1)  # 10 batches of 100 per shard: one shard of 30
        with np.load(os.path.join(shard_dir, acts[0])) as f:
            self.assertEqual(sorted(f.files), ["class_ids", "features", "logits"])
        os.remove(os.path.join(shard_dir, acts[0]))
        again = evaluate("b.json")
        for key in ("fid", "kid", "inception_score", "class_accuracy", "nll_bits_per_token"):
            self.assertEqual(first[key], again[key], key)
        # The in-memory scores of the same samples.
        gin.clear_config()
        memory = evaluator.evaluate(self.p_dir, os.path.join(root, "c.json"), c_dir, 30)
        self.assertAllClose(memory["fid"], first["fid"], rtol=1e-6)
        self.assertEqual(memory["class_accuracy"], first["class_accuracy"])

    def _run(self, args, env=None):
        proc = subprocess.run(
            [sys.executable, *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env=env,
        )
        self.assertEqual(proc.returncode, 0, msg=_tail(proc.stderr))
        return proc

    def test_two_replicas_write_the_files_of_one_device(self):
        out = self.get_temp_dir()
        check = os.path.join(REPO, "tests", "inference_check.py")
        self._run(
            [check, f"--prior_dir={self.p_dir}", f"--quantizer_dir={self.q_dir}"]
            + [f"--output_dir={out}"]
        )
        one, two = _tree(os.path.join(out, "one")), _tree(os.path.join(out, "two"))
        self.assertIn("samples/samples-00001-of-00002.npz", one)
        self.assertIn("tokens/test-00003-of-00004.tfrecord", one)
        self.assertEqual(_differing(one, two), [])

    def _kill_and_resume(self, tool, flags, output_dir, shard_glob, total):
        """Runs `tool` until its first shard appears, kill -9, reruns: returns the shard count
        seen right after the kill."""
        log = open(os.path.join(self.get_temp_dir(), "killed.log"), "w+")
        proc = subprocess.Popen(
            [sys.executable, os.path.join(REPO, "tools", tool), *flags],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + TIMEOUT
        try:
            while not tf.io.gfile.glob(os.path.join(output_dir, shard_glob)):
                self.assertIsNone(proc.poll(), "the run ended before writing a shard")
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            log.close()
        done = len(tf.io.gfile.glob(os.path.join(output_dir, shard_glob)))
        self.assertLess(done, total, "killed too late to test resuming")
        self._run([os.path.join(REPO, "tools", tool), *flags])
        return done

    def test_killed_sampling_resumes_to_the_uninterrupted_files(self):
        root = self.get_temp_dir()
        flags = ["--num_samples=200", "--batch_size=2", "--shard_size=2", "--seed=1"]
        flags += [f"--model_dir={self.p_dir}"]
        ref, killed = os.path.join(root, "ref"), os.path.join(root, "killed")
        self._run([os.path.join(REPO, "tools", "sample.py"), f"--output_dir={ref}", *flags])
        done = self._kill_and_resume(
            "sample.py", [f"--output_dir={killed}", *flags], killed, "samples-*-of-*.npz", 100
        )
        self.assertGreater(done, 0)
        self.assertEqual(_differing(_tree(killed), _tree(ref)), [])

    def test_killed_encoding_resumes_to_the_uninterrupted_files(self):
        root = self.get_temp_dir()
        flags = [f"--quantizer_dir={self.q_dir}", "--splits=test", "--shard_size=10"]
        flags += ["--batch_size=10"]
        ref, killed = os.path.join(root, "ref"), os.path.join(root, "killed")
        self._run([os.path.join(REPO, "tools", "encode.py"), f"--output_dir={ref}", *flags])
        self._kill_and_resume(
            "encode.py", [f"--output_dir={killed}", *flags], killed, "test-*.tfrecord", 36
        )
        self.assertEqual(_differing(_tree(killed), _tree(ref)), [])
        info = json.loads(_tree(ref)["tokens_info.json"])
        self.assertEqual(info["num_examples"], {"test": 360})

    def test_two_workers_sample_the_files_of_one_process(self):
        from test_distribute import _free_ports

        root = self.get_temp_dir()
        flags = ["--num_samples=30", "--batch_size=4", "--shard_size=8", "--seed=2"]
        flags += [f"--model_dir={self.p_dir}"]
        ref, multi = os.path.join(root, "ref"), os.path.join(root, "multi")
        tool = os.path.join(REPO, "tools", "sample.py")
        self._run([tool, f"--output_dir={ref}", *flags])
        cluster = {"worker": [f"localhost:{p}" for p in _free_ports(2)]}
        procs = []
        for index in range(2):
            env = dict(
                os.environ,
                TF_CONFIG=json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": index}}
                ),
            )
            log = open(os.path.join(root, f"worker{index}.log"), "w+")
            cmd = [sys.executable, tool, f"--output_dir={multi}", "--strategy=multi_worker", *flags]
            procs.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log), log))
        deadline = time.monotonic() + TIMEOUT
        try:
            for proc, _ in procs:
                proc.wait(timeout=max(deadline - time.monotonic(), 1))
        finally:
            for proc, _ in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        logs = []
        for proc, log in procs:
            log.seek(0)
            logs.append(log.read())
            log.close()
            self.assertEqual(proc.returncode, 0, msg=_tail(logs[-1]))
        self.assertEqual(_differing(_tree(multi), _tree(ref)), [])
        # Each worker drew its own shards: 0 and 2 on the chief, 1 and 3 on the other.
        second = "wrote " + os.path.join(multi, "samples-00001-of-00004.npz")
        self.assertIn(second, logs[1])
        self.assertNotIn(second, logs[0])
