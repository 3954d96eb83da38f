"""tf.distribute: a 2-replica MirroredStrategy trains exactly like one device (both stages, the
trainer's logged metrics are global means); MultiWorkerMirroredStrategy on two localhost worker
processes (identical weights, only the chief's checkpoints, resume after a restart); global-batch
input pipelines; the TPU strategy path and `tools/train.py --tpu`.

The strategy runs happen in subprocesses: logical CPU devices and collective ops must be set up
before TensorFlow initializes, which this (pytest) process has long done.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from unittest import mock

import numpy as np
import tensorflow as tf

from testcase import TestCase
from vim_tf.data import digits, tokens
from vim_tf.data import input_pipeline as ip
from vim_tf.training import distribute

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Seconds for one helper run (both workers of a multi-worker run); a hang fails the test instead
# of blocking CI.
TIMEOUT = 400


def _tail(text, lines=40):
    return "\n".join(text.splitlines()[-lines:])


class MirroredMatchesOneDeviceTest(TestCase):
    """tests/distribute_check.py: the same 3 global batches of 8, trained by the trainer
    on one device and on MirroredStrategy(['/cpu:0', '/cpu:1']) (4 examples per replica)."""

    def _check(self, case):
        out = os.path.join(self.get_temp_dir(), f"{case}.npz")
        proc = subprocess.run(
            [sys.executable, os.path.join(REPO, "tests", "distribute_check.py"), f"--case={case}"]
            + [f"--output={out}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        self.assertEqual(proc.returncode, 0, msg=_tail(proc.stderr))
        with np.load(out) as f:
            d = dict(f)
        np.testing.assert_array_equal(d["num_replicas"], [1, 2])
        self.assertTrue(
            any("(global batch 8, 2 replica(s))" in line for line in d["mirrored/log"]),
            msg=d["mirrored/log"],
        )
        # Same initial weights, so any difference below comes from training.
        num_init = len([k for k in d if k.startswith("single/init/")])
        for i in range(num_init):
            np.testing.assert_array_equal(d[f"single/init/{i}"], d[f"mirrored/init/{i}"])
        # The two replicas' copies of every variable (model and optimizer) stayed identical.
        self.assertLessEqual(float(d["mirrored/replica_spread"]), 1e-7)

        # Final model weights and optimizer state (Adam's moments scale with the gradient, so a
        # wrong loss scaling across replicas shows there even where Adam's step does not).
        names = d["single/names"]
        num_vars = len(names)
        self.assertEqual(num_vars, len(d["mirrored/names"]))
        moved = 0.0
        for i in range(num_vars):
            a = d[f"single/var/{i}"].astype(np.float64)
            b = d[f"mirrored/var/{i}"].astype(np.float64)
            self.assertEqual(a.shape, b.shape, names[i])
            if not a.size:
                continue
            if i < num_init:
                moved = max(moved, float(np.abs(a - d[f"single/init/{i}"]).max()))
            if i < num_init and str(names[i]).endswith("attn/qkv_bias"):
                # The key bias (the middle third) shifts every attention logit of a query
                # equally, so its exact gradient is 0: Adam normalizes the float noise in its
                # place into steps of random sign, which differ between any two summation
                # orders. Its query and value thirds are compared.
                third = len(a) // 3
                a = np.concatenate([a[:third], a[2 * third :]])
                b = np.concatenate([b[:third], b[2 * third :]])
            diff, norm = np.linalg.norm(a - b), np.linalg.norm(a)
            if i < num_init:  # model weights
                self.assertLessEqual(diff, 1e-6 + 1e-4 * norm, msg=f"{names[i]}: {diff} / {norm}")
            else:  # optimizer state (iterations, moments)
                self.assertLessEqual(diff, 1e-4 * norm + 1e-12, msg=f"{names[i]}: {diff} / {norm}")
        self.assertGreater(moved, 1e-3)  # training moved the weights far beyond the tolerance

        # What the trainer logged at every step: the global-batch value, not one replica's.
        tags = sorted(k[len("single/scalar/") :] for k in d if k.startswith("single/scalar/"))
        mirrored_tags = sorted(
            k[len("mirrored/scalar/") :] for k in d if k.startswith("mirrored/scalar/")
        )
        self.assertEqual(tags, mirrored_tags)
        for tag in tags:
            if tag == "train/images_per_second":
                continue
            np.testing.assert_array_equal(
                d[f"single/scalar_steps/{tag}"], d[f"mirrored/scalar_steps/{tag}"]
            )
            np.testing.assert_allclose(
                d[f"mirrored/scalar/{tag}"],
                d[f"single/scalar/{tag}"],
                rtol=1e-5,
                atol=1e-6,
                err_msg=tag,
            )
        return d, tags

    def test_quantizer_with_dead_code_restarts(self):
        d, tags = self._check("quantizer_restart")
        for tag in ("loss", "l2", "vq", "batch_codebook_usage", "batch_perplexity"):
            self.assertIn(f"train/{tag}", tags)
        np.testing.assert_array_equal(d["single/scalar_steps/train/loss"], [1, 2, 3])
        # The first step re-seeded dead codes from the gathered global batch.
        self.assertGreater(d["single/scalar/train/restarted_codes"][0], 0)

    def test_quantizer_adversarial_phase(self):
        d, tags = self._check("quantizer_gan")
        for tag in ("discriminator_loss", "generator_adversarial", "r1_penalty", "logits_real"):
            self.assertIn(f"train/{tag}", tags)
        # The adversarial term and the discriminator trained at every step; R1 at steps 1 and 3.
        np.testing.assert_array_equal(d["single/scalar_steps/train/discriminator_loss"], [1, 2, 3])
        np.testing.assert_array_equal(d["single/scalar_steps/train/r1_penalty"], [1, 3])

    def test_prior(self):
        d, tags = self._check("prior")
        for tag in ("loss", "bits_per_token", "accuracy"):
            self.assertIn(f"train/{tag}", tags)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class MultiWorkerTest(TestCase):
    """Two `tools/train.py --strategy=multi_worker` processes on localhost train a tiny stage-1
    model (through tests/multi_worker.py, which dumps each worker's final weights)."""

    def _run_workers(self, model_dir, data_dir, out_dir, train_steps):
        ports = _free_ports(2)
        cluster = {"worker": [f"localhost:{p}" for p in ports]}
        stack = "{'num_layers': 1, 'num_heads': 2, 'hidden_dim': 16, 'mlp_dim': 32}"
        bindings = [
            "IMAGE_SIZE = 16",
            "BATCH_SIZE = 8",  # global: 4 per worker
            f"TRAIN_STEPS = {train_steps}",
            "CHECKPOINT_EVERY = 2",
            f"ViTVQGAN.encoder = {stack}",
            f"ViTVQGAN.decoder = {stack}",
            "ViTVQGAN.codebook_size = 16",
            "ViTVQGAN.code_dim = 4",
            "VQGANTraining.discriminator = {'channel_base': 64, 'channel_max': 8}",
            "VQGANTraining.disc_start_step = 100",
            "WarmupCosine.warmup_steps = 2",
            "train.log_every = 1",
            "train.image_every = 100",
            f"make_dataset.data_dir = '{data_dir}'",
        ]
        flags = [
            "--strategy=multi_worker",
            f"--model_dir={model_dir}",
            "--gin_file=gin/experiments/digits_vitvqgan.gin",
        ] + [f"--gin_bindings={b}" for b in bindings]
        procs = []
        for index in range(2):
            env = dict(
                os.environ,
                TF_CONFIG=json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": index}}
                ),
            )
            weights = os.path.join(out_dir, f"worker{index}_{train_steps}.npz")
            log = open(os.path.join(out_dir, f"worker{index}_{train_steps}.log"), "w+")
            procs.append(
                (
                    subprocess.Popen(
                        [sys.executable, os.path.join(REPO, "tests", "multi_worker.py")]
                        + [f"--weights_out={weights}", "--", *flags],
                        cwd=REPO,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    ),
                    weights,
                    log,
                )
            )
        results = []
        deadline = time.monotonic() + TIMEOUT
        try:
            for proc, _, _ in procs:
                proc.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            for proc, _, _ in procs:
                proc.kill()
            for proc, _, _ in procs:
                proc.wait()
        for proc, weights, log in procs:
            log.seek(0)
            text = log.read()
            log.close()
            self.assertEqual(proc.returncode, 0, msg=_tail(text))
            with np.load(weights) as f:
                results.append(dict(f))
        return results

    def _assert_same_weights(self, w0, w1):
        n = len([k for k in w0 if k.startswith("var/")])
        self.assertGreater(n, 10)
        for i in range(n):
            self.assertEqual(str(w0[f"name/{i}"]), str(w1[f"name/{i}"]))
            np.testing.assert_allclose(
                w0[f"var/{i}"], w1[f"var/{i}"], rtol=0, atol=1e-6, err_msg=str(w0[f"name/{i}"])
            )

    def _assert_only_chief_checkpoints(self, model_dir, steps, runs):
        self.assertFalse(os.path.exists(os.path.join(model_dir, distribute.WORKERS_DIR)))
        found = []
        for root, _, files in os.walk(model_dir):
            for name in files:
                if name.startswith("ckpt-") or name == "checkpoint" or "tfevents" in name:
                    found.append(os.path.relpath(os.path.join(root, name), model_dir))
        self.assertTrue(all(os.sep not in f for f in found), found)  # nothing in subdirs
        for step in steps:
            self.assertIn(f"ckpt-{step}.index", found)
        # The chief's summaries only: one events file per run.
        self.assertLen([f for f in found if "tfevents" in f], runs)

    def test_two_workers_train_checkpoint_and_resume(self):
        root = self.get_temp_dir()
        data_dir = os.path.join(root, "tfds")
        digits.load_digits_builder(resolution=16, data_dir=data_dir)  # prepared once, up front
        model_dir = os.path.join(root, "model")

        w0, w1 = self._run_workers(model_dir, data_dir, root, train_steps=3)
        for w in (w0, w1):
            self.assertEqual(str(w["strategy"]), "multi_worker")
            self.assertEqual(int(w["step"]), 3)
            # BATCH_SIZE is the global batch: 2 workers x 4 examples.
            self.assertTrue(
                any("from step 0 to 3 (global batch 8, 2 replica(s))" in s for s in w["log"]),
                msg=w["log"][-5:],
            )
        self._assert_same_weights(w0, w1)
        self._assert_only_chief_checkpoints(model_dir, steps=(2, 3), runs=1)
        self.assertTrue(any("saved" in s and ".workers" in s for s in w1["log"]))  # it did save

        # Restarted with more steps: both workers resume from the chief's newest checkpoint.
        w0, w1 = self._run_workers(model_dir, data_dir, root, train_steps=5)
        for w in (w0, w1):
            self.assertEqual(int(w["step"]), 5)
            resumed = f"resumed from {os.path.join(model_dir, 'ckpt-3')} at step 3"
            self.assertTrue(any(resumed in s for s in w["log"]), msg=[s for s in w["log"][:40]])
            self.assertTrue(any("from step 3 to 5 (global batch 8" in s for s in w["log"]))
        self._assert_same_weights(w0, w1)
        self._assert_only_chief_checkpoints(model_dir, steps=(4, 5), runs=2)


class GlobalBatchInputTest(TestCase):
    """BATCH_SIZE is global: each input pipeline yields per-replica batches of its own shard."""

    def _contexts(self, pipelines, replicas):
        return [
            tf.distribute.InputContext(
                num_input_pipelines=pipelines, input_pipeline_id=i, num_replicas_in_sync=replicas
            )
            for i in range(pipelines)
        ]

    def _token_dir(self, examples_per_shard):
        token_dir = tempfile.mkdtemp(dir=self.get_temp_dir())
        rng = np.random.default_rng(0)
        toks = rng.integers(0, 16, size=(20, 2, 2))
        labels = np.arange(20)  # unique: identifies each example
        info = {"grid_size": 2, "codebook_size": 16}
        for split in ("train", "test"):
            tokens.write_token_shards(
                token_dir, split, [(toks, labels)], info, examples_per_shard=examples_per_shard
            )
        return token_dir

    def test_token_dataset_per_replica_batches_and_disjoint_shards(self):
        for per_shard in (7, 100):  # 3 files (sharded by file) and 1 file (sharded by record)
            token_dir = self._token_dir(per_shard)
            # 2 workers x 2 replicas: global batch 8 -> 2 per replica, static (drop_remainder).
            contexts = self._contexts(2, 4)
            train = tokens.make_token_dataset(
                token_dir=token_dir, batch_size=8, input_context=contexts[0], seed=0
            )
            self.assertEqual(train.element_spec["tokens"].shape.as_list(), [2, 4])
            for batch in train.take(3):
                self.assertEqual(batch["tokens"].shape[0], 2)
            seen = []
            for ctx in contexts:
                ds = tokens.make_token_dataset(
                    token_dir=token_dir,
                    split="test",
                    batch_size=8,
                    training=False,
                    input_context=ctx,
                )
                seen.append(sorted(int(y) for b in ds for y in b["label"].numpy()))
            self.assertEmpty(set(seen[0]) & set(seen[1]), msg=per_shard)
            self.assertEqual(sorted(seen[0] + seen[1]), list(range(20)), msg=per_shard)
            self.assertNotEmpty(seen[0])
            self.assertNotEmpty(seen[1])
        with self.assertRaisesRegex(ValueError, "divisible"):
            tokens.make_token_dataset(
                token_dir=token_dir, batch_size=6, input_context=self._contexts(1, 4)[0]
            )

    def test_image_dataset_per_replica_batches(self):
        data_dir = os.path.join(self.get_temp_dir(), "tfds")
        digits.load_digits_builder(resolution=8, data_dir=data_dir)
        ctx = self._contexts(2, 4)[1]
        ds = ip.make_dataset(
            "digits", image_size=8, batch_size=8, data_dir=data_dir, input_context=ctx, seed=0
        )
        self.assertEqual(ds.element_spec["image"].shape.as_list(), [2, 8, 8, 3])


class RestartFlagTest(TestCase):
    def test_disabled_restart_changes_nothing(self):
        # The trainer passes `enabled=ok` (not a tf.cond: the restart gathers across replicas).
        from vim_tf.models.quantizer import VectorQuantizer

        q = VectorQuantizer(8, 4, 6, restart_dead_codes=True)
        q.build((None, 5, 6))
        out = q(tf.random.normal((2, 5, 6)))
        codebook, ema = q.codebook.numpy(), q.usage_ema.numpy()
        self.assertEqual(float(q.restart(out["z"], out["counts"], 1, enabled=False)), 0.0)
        np.testing.assert_array_equal(q.codebook.numpy(), codebook)
        np.testing.assert_array_equal(q.usage_ema.numpy(), ema)
        self.assertGreater(float(q.restart(out["z"], out["counts"], 1, enabled=True)), 0.0)
        self.assertFalse(np.array_equal(q.codebook.numpy(), codebook))


class StrategyFlagTest(TestCase):
    def _tpu_calls(self, address):
        calls = mock.Mock()
        with (
            mock.patch.object(tf.distribute.cluster_resolver, "TPUClusterResolver", calls.resolver),
            mock.patch.object(tf.config, "experimental_connect_to_cluster", calls.connect),
            mock.patch.object(tf.tpu.experimental, "initialize_tpu_system", calls.initialize),
            mock.patch.object(tf.distribute, "TPUStrategy", calls.strategy),
        ):
            strategy = distribute.get_strategy("tpu", address)
        self.assertIs(strategy, calls.strategy.return_value)
        return calls.mock_calls, calls.resolver.return_value

    def test_tpu_vm_uses_the_local_chips(self):
        made, r = self._tpu_calls("local")
        self.assertEqual(
            made, [mock.call.resolver(tpu="local"), mock.call.initialize(r), mock.call.strategy(r)]
        )

    def test_tpu_by_name_connects_first(self):
        for address, resolved in (("my-tpu", "my-tpu"), (None, ""), ("grpc://10.0.0.2:8470",) * 2):
            made, r = self._tpu_calls(address)
            self.assertEqual(
                made,
                [
                    mock.call.resolver(tpu=resolved),
                    mock.call.connect(r),
                    mock.call.initialize(r),
                    mock.call.strategy(r),
                ],
            )

    def test_multi_worker_needs_tf_config(self):
        with mock.patch.dict(os.environ):
            os.environ.pop("TF_CONFIG", None)
            with self.assertRaisesRegex(ValueError, "TF_CONFIG"):
                distribute.get_strategy("multi_worker")
        with self.assertRaisesRegex(ValueError, "unknown strategy 'gpu'"):
            distribute.get_strategy("gpu")

    def test_train_tool_passes_strategy_and_tpu(self):
        # The train binary (tools/train.py, vim-train) with train_lib.run stubbed out (no TensorFlow needed): what it passes on.
        script = textwrap.dedent(
            """
            import json, sys, types
            import vim_tf.training
            calls = []
            stub = types.ModuleType("vim_tf.training.train_lib")
            stub.run = lambda *args, **kwargs: calls.append([list(args), kwargs])
            sys.modules["vim_tf.training.train_lib"] = stub
            vim_tf.training.train_lib = stub
            from vim_tf.bin import train as tool
            tool.FLAGS(["train.py", "--model_dir=/tmp/m", "--strategy=tpu", "--tpu=local",
                        "--gin_file=a.gin"])
            tool.main([])
            print(json.dumps(calls))
            """
        )
        proc = subprocess.run(
            [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        self.assertEqual(proc.returncode, 0, msg=proc.stderr)
        (args, kwargs), *_ = json.loads(proc.stdout.strip().splitlines()[-1])
        bound = dict(zip(["model_dir", "gin_files", "gin_bindings", "strategy", "tpu"], args))
        bound.update(kwargs)
        self.assertEqual(bound["strategy"], "tpu")
        self.assertEqual(bound["tpu"], "local")
        self.assertEqual(bound["model_dir"], "/tmp/m")


if __name__ == "__main__":
    tf.test.main()
