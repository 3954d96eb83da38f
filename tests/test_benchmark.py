"""The benchmark tool: FLOP formulas, interleaved timing, and a smoke run's JSON structure."""

import json
import os

import keras
import numpy as np
import tensorflow as tf

from testcase import TestCase
from vim_tf.reports import benchmark
from vim_tf.utils import model_dir


class FlopsTest(TestCase):
    def test_block_formula(self):
        # q/k/v + out: 8*N*D^2 = 8*4*64; logits + values: 4*N^2*D = 4*16*8; MLP: 4*N*D*M.
        self.assertEqual(benchmark.block_flops(4, 8, 16), 2048 + 512 + 2048)

    def test_stage1_flops_by_hand(self):
        # 8 px images, 4 px patches: N = 4 tokens, P = 48; D = 8, M = 16, one block each side;
        # K = 16 codes of c = 4.
        stack = {"num_layers": 1, "num_heads": 2, "hidden_dim": 8, "mlp_dim": 16}
        got = benchmark.stage1_flops(8, 4, stack, codebook_size=16, code_dim=4)
        forward = (
            2 * 4 * 48 * 8  # patch embedding        3072
            + 4608  # encoder block (2048 + 512 + 2048)
            + 2 * (2 * 4 * 8 * 16)  # encoder feed-forward   2048
            + 2 * 4 * 8 * 4  # in_proj                  256
            + 2 * 4 * 4 * 16  # code similarities       512
            + 2 * 4 * 4 * 8  # out_proj                 256
            + 4608  # decoder block
            + 2 * 4 * 8 * 16  # decoder ffn_in         1024
            + 2 * 4 * 16 * (16 * 6)  # pixel head     12288
        )
        self.assertEqual(forward, 28672)
        self.assertEqual(got["forward"], 28672)
        # 3x forward, the argmax'ed similarities once, no gradient into the images.
        self.assertEqual(got["train"], 3 * 28672 - 2 * 512 - 3072)

    def test_tiny_config_flops(self):
        got = benchmark.stage1_flops(**benchmark._model_args(benchmark.TINY_STAGE1))
        # N = 64, D = 128, M = 512, P = 48, K = 512, c = 32, 2 + 2 blocks of 27,262,976.
        self.assertEqual(got["forward"], 144_441_344)
        self.assertEqual(got["train"], 3 * 144_441_344 - 2 * 2_097_152 - 786_432)

    def test_profiler_count_agrees_with_the_formula(self):
        cfg = benchmark.SMOKE_STAGE1
        model = benchmark.quantizer(**benchmark._model_args(cfg))
        images = tf.random.uniform((cfg["batch"], 16, 16, 3))
        data = {"image": images, "label": tf.zeros((cfg["batch"],), tf.int32)}
        analytic = benchmark.stage1_flops(**benchmark._model_args(cfg))
        fwd = benchmark.profiled_flops(lambda x: model(x, training=True)["loc"], images)
        step = benchmark.profiled_flops(model.train_step, data)
        # The profiler also counts elementwise ops (and the Adam update): a little more.
        self.assertBetween(fwd / (analytic["forward"] * cfg["batch"]), 1.0, 1.15)
        self.assertBetween(step / (analytic["train"] * cfg["batch"]), 1.0, 1.3)


class TimingTest(TestCase):
    def test_interleaved_turns_and_medians(self):
        calls = []
        fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
        times = benchmark.timed_interleaved(fns, repeats=3)
        self.assertEqual(calls, ["a", "b"] * 4)  # one warm-up each, then 3 turns
        self.assertEqual(set(times), {"a", "b"})
        self.assertTrue(all(t >= 0 for t in times.values()))

    def test_unknown_group(self):
        with self.assertRaisesRegex(ValueError, "unknown benchmark groups.*'stage3'"):
            benchmark.run_all(groups=["stage3"])


class SmokeRunTest(TestCase):
    def test_quick_smoke_run_json(self):
        report = benchmark.run_all(quick=True, smoke=True, groups=["stage1", "stage2", "flops"])
        self.assertEqual(keras.config.dtype_policy().name, "float32")
        path = os.path.join(self.get_temp_dir(), "bench.json")
        model_dir.write_json(path, report)
        loaded = json.load(open(path))
        self.assertEqual(set(loaded), {"machine", "results", "flops"})
        self.assertEqual(loaded["machine"]["tensorflow"], tf.__version__)
        rows = {r["name"]: r for r in loaded["results"]}
        for row in loaded["results"]:
            self.assertEqual(set(row), {"name", "value", "unit"})
            self.assertTrue(np.isfinite(row["value"]) and row["value"] > 0, msg=row)
        for stage, unit in (
            ("stage1 train, tiny 16px patch 4 batch 4", "img/s"),
            ("stage2 train, tiny prior seq 16 batch 2", "tokens/s"),
        ):
            for variant in ("float32", "float32, XLA", "mixed_bfloat16", "mixed_bfloat16, XLA"):
                self.assertEqual(rows[f"{stage}, {variant}"]["unit"], unit)
            self.assertEqual(rows[f"{stage}: mixed_bfloat16 / float32"]["unit"], "x")
            self.assertEqual(rows[f"{stage}: XLA / no XLA (float32)"]["unit"], "x")
        flops = loaded["flops"]
        want = benchmark.stage1_flops(**benchmark._model_args(benchmark.SMOKE_STAGE1))
        self.assertEqual(flops["train_step_flops"], want["train"] * 4)
        self.assertGreater(flops["profiler_train_step_flops"], flops["train_step_flops"])
        self.assertAllClose(
            flops["achieved_gflops"],
            flops["train_step_flops"] / flops["step_seconds"] / 1e9,
        )
        self.assertAllClose(
            flops["fraction_of_matmul"],
            flops["achieved_gflops"] / flops["matmul_256_float32_gflops"],
        )
        self.assertIn("dense matmul 256x256 float32", rows)
        self.assertEqual(rows["dense matmul 256x256 float32"]["unit"], "GFLOP/s")
        table = benchmark.table(loaded)
        self.assertEqual(len(table.splitlines()), len(loaded["results"]) + 2)
