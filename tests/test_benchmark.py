"""The benchmark tool: FLOP formulas, timing in turns, the figures and ratios of a run, and a
smoke run of every workload in fresh processes with this tree as its own baseline."""

import json
import os
import re
import statistics

import tensorflow as tf

from testcase import TestCase
from vim_tf.reports import benchmark, flops, workload_runner
from vim_tf.training import precision, trainer
from vim_tf.utils import fs

SMALL = {"num_layers": 1, "num_heads": 2, "hidden_dim": 8, "mlp_dim": 16}


class FlopsTest(TestCase):
    def test_block_formula(self):
        # q/k/v + out: 8*N*D^2 = 8*4*64; logits + values: 4*N^2*D = 4*16*8; MLP: 4*N*D*M.
        self.assertEqual(flops.block_flops(4, 8, 16), 2048 + 512 + 2048)
        # One token attending to 3 positions: 8*64 + 4*3*8 + 4*8*16.
        self.assertEqual(flops.block_flops(1, 8, 16, attended=3), 512 + 96 + 512)

    def test_stage1_flops_by_hand(self):
        # 8 px images, 4 px patches: N = 4 tokens, P = 48; D = 8, M = 16, one block each side;
        # K = 16 codes of c = 4.
        got = flops.stage1_flops(8, 4, SMALL, codebook_size=16, code_dim=4)
        encode = (
            2 * 4 * 48 * 8  # patch embedding        3072
            + 4608  # encoder block (2048 + 512 + 2048)
            + 2 * (2 * 4 * 8 * 16)  # encoder feed-forward   2048
            + 2 * 4 * 8 * 4  # in_proj                  256
            + 2 * 4 * 4 * 16  # code similarities       512
        )
        forward = (
            encode
            + 2 * 4 * 4 * 8  # out_proj                 256
            + 4608  # decoder block
            + 2 * 4 * 8 * 16  # decoder ffn_in         1024
            + 2 * 4 * 16 * (16 * 6)  # pixel head     12288
        )
        self.assertEqual((encode, forward), (10496, 28672))
        self.assertEqual(got["encode"], 10496)
        self.assertEqual(got["forward"], 28672)
        # 3x forward, the argmax'ed similarities once, no gradient into the images.
        self.assertEqual(got["train"], 3 * 28672 - 2 * 512 - 3072)

    def test_tiny_config_flops(self):
        kind, cfg = workload_runner.workload_config("stage1_tiny")
        got = flops.stage1_flops(**{k: v for k, v in cfg.items() if k != "batch"})
        # N = 64, D = 128, M = 512, P = 48, K = 512, c = 32, 2 + 2 blocks of 27,262,976.
        self.assertEqual(got["forward"], 144_441_344)
        self.assertEqual(got["train"], 3 * 144_441_344 - 2 * 2_097_152 - 786_432)
        self.assertEqual(flops.workload_flops(kind, cfg), 32 * got["train"])

    def test_prior_flops_by_hand(self):
        # grid 2: N = 4 positions; D = 8, M = 16, one block; K = 16 codes.
        got = flops.prior_flops(SMALL, grid_size=2, codebook_size=16)
        self.assertEqual(got["forward"], 4608 + 2 * 4 * 8 * 16)
        self.assertEqual(got["train"], 3 * 5632)
        # Position i attends to i + 1 positions: 8*D^2 + 4*D*M + 4*(i+1)*D, plus the head 2*D*K.
        per_position = [512 + 512 + 4 * (i + 1) * 8 + 256 for i in range(4)]
        self.assertEqual(got["sample"], sum(per_position))
        self.assertEqual(got["sample"], 5440)

    def test_workload_flops_and_units(self):
        cfg = dict(stack=SMALL, grid_size=2, codebook_size=16, batch=3, num_classes=10)
        self.assertEqual(flops.workload_flops("prior", cfg), 3 * 3 * 5632)
        self.assertEqual(flops.workload_flops("sampling", cfg), 3 * 5440)
        self.assertEqual(flops.workload_units("sampling", cfg), (12, "tokens/s"))
        with self.assertRaisesRegex(ValueError, "unknown workload kind 'decode'"):
            flops.workload_flops("decode", cfg)

    def test_profiler_counts_agree_with_the_formulas(self):
        api = workload_runner.Api()
        _, cfg = workload_runner.workload_config("stage1_tiny", smoke=True)
        network, model = api.quantizer(cfg)
        images = tf.random.uniform((cfg["batch"], 16, 16, 3))
        data = {"image": images, "label": tf.zeros((cfg["batch"],), tf.int32)}
        analytic = flops.stage1_flops(**{k: v for k, v in cfg.items() if k != "batch"})
        fwd = flops.profiled_flops(lambda x: model(x, training=True)["loc"], images)
        step = flops.profiled_flops(model.train_step, data)
        enc = flops.profiled_flops(network.encode, images)
        # The profiler also counts elementwise ops (and the Adam update): a little more.
        self.assertBetween(fwd / (analytic["forward"] * cfg["batch"]), 1.0, 1.15)
        self.assertBetween(step / (analytic["train"] * cfg["batch"]), 1.0, 1.3)
        self.assertBetween(enc / (analytic["encode"] * cfg["batch"]), 1.0, 1.15)
        # Wider than SMALL: at width 8 the softmax and layer norms are a quarter of the count.
        stack = dict(SMALL, hidden_dim=64, mlp_dim=128)
        prior_cfg = dict(stack=stack, grid_size=4, codebook_size=128, num_classes=10)
        prior, _ = api.prior(prior_cfg, train=False)
        tokens = tf.zeros((2, 16), tf.int32)
        counted = flops.profiled_flops(lambda t: prior(t, tf.zeros((2,), tf.int32)), tokens)
        want = 2 * flops.prior_flops(stack, 4, 128)["forward"]
        self.assertBetween(counted / want, 1.0, 1.1)


class TimingTest(TestCase):
    def test_interleaved_turns_and_medians(self):
        calls = []
        fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
        times = benchmark.timed_interleaved(fns, repeats=3)
        self.assertEqual(calls, ["a", "b"] * 4)  # one warm-up each, then 3 turns
        self.assertEqual(set(times), {"a", "b"})
        self.assertTrue(all(t >= 0 for t in times.values()))


def _job(times, matmul_times, dtype="float32", variant="float32", ops=None):
    info = {"policy": "float32", "compute_dtype": dtype, "jit": False, "times": times}
    if ops:
        info["ops"] = ops
    return {"variants": {variant: info}, "matmul": {dtype: {"n": 100, "times": matmul_times}}}


class FiguresTest(TestCase):
    def test_rounds_pool_and_ratio_to_the_baseline(self):
        plan = benchmark._Plan(False, True, None, None, None, None)
        kind, cfg = workload_runner.workload_config("stage1_tiny", smoke=True)
        jobs = {
            # Two rounds of this tree: calls 1, 2 | 4 s -> median 2 s; matmul median 0.5 s.
            "current": [_job([1.0, 2.0], [0.5, 0.4]), _job([4.0], [0.6])],
            "baseline": [_job([8.0], [1.0]), _job([8.0], [1.0])],
        }
        row = benchmark._row("stage1_tiny", plan, jobs, baseline=True)
        cur, base = row["current"]["float32"], row["baseline"]["float32"]
        self.assertEqual(cur["times"], [1.0, 2.0, 4.0])
        self.assertEqual(cur["seconds"], 2.0)
        self.assertEqual(cur["throughput"], cfg["batch"] / 2.0)
        step = flops.workload_flops(kind, cfg)
        self.assertAlmostEqual(cur["achieved_gflops"], step / 2.0 / 1e9)
        self.assertAlmostEqual(cur["peak_gflops"], 2 * 100**3 / 0.5 / 1e9)
        self.assertAlmostEqual(cur["fraction_of_peak"], (step / 2.0) / (2 * 100**3 / 0.5))
        self.assertEqual(row["ratio_to_baseline"]["float32"], 4.0)  # 8 s vs 2 s
        self.assertEqual(base["throughput"], cfg["batch"] / 8.0)

    def test_profiled_rounds_and_the_products_only_bound(self):
        plan = benchmark._Plan(False, True, None, None, None, None)
        top = {"_MklMatMul": 0.5, "Mul": 0.3}
        jobs = {
            "current": [
                _job([2.0], [0.5], ops={"matmul_seconds": 0.5, "op_seconds": 1.0, "top": top}),
                _job([2.0], [0.5], ops={"matmul_seconds": 1.5, "op_seconds": 2.0, "top": {}}),
                _job([2.0], [0.5], ops={"matmul_seconds": 1.0, "op_seconds": 3.0, "top": {}}),
            ],
            "baseline": [_job([8.0], [1.0])],
        }
        row = benchmark._row("stage1_tiny", plan, jobs, baseline=True)
        ops = row["current"]["float32"]["ops"]
        # Medians over the rounds; the baseline's 8 s over 1 s of products: at most 8x.
        self.assertEqual((ops["matmul_seconds"], ops["op_seconds"], ops["rounds"]), (1.0, 2.0, 3))
        self.assertEqual(ops["bound_ratio"], 8.0)
        cells = benchmark.ops_table({"rows": [row]}).splitlines()[2].split(" | ")
        self.assertEqual(
            cells[1:], ["float32", "2000", "1000", "2000", "Mul 300", "4.00x", "8.00x |"]
        )

    def test_a_failed_variant_is_a_dash(self):
        plan = benchmark._Plan(False, True, None, None, None, None)
        failed = {"variants": {"mixed_bfloat16": {"error": "TypeError: x"}}, "matmul": {}}
        jobs = {"current": [failed], "baseline": [_job([1.0], [1.0])]}
        row = benchmark._row("sampling_256", plan, jobs, baseline=True)
        self.assertEqual(row["current"]["mixed_bfloat16"], {"error": "TypeError: x"})
        self.assertIsNone(row["ratio_to_baseline"]["mixed_bfloat16"])
        line = benchmark.table({"rows": [row]}).splitlines()[2]
        self.assertEqual(line.split(" | ")[4], "-")


class OpProfileTest(TestCase):
    def test_op_times_by_hand(self):
        from tensorflow.tsl.profiler.protobuf import xplane_pb2

        space = xplane_pb2.XSpace()
        plane = space.planes.add(name="/host:CPU")
        for i, name in enumerate(["a/MatMul:_MklMatMul", "b:Tanh", "ExecutorState::Process"]):
            plane.event_metadata[i + 1].name = name
        compute = plane.lines.add(name="tf_Compute/1")
        for meta, ps in [(1, 3_000_000), (2, 1_000_000), (1, 2_000_000), (3, 9_000_000)]:
            compute.events.add(metadata_id=meta, duration_ps=ps)
        other = plane.lines.add(name="python")  # not an executor thread: ignored
        other.events.add(metadata_id=2, duration_ps=7_000_000)
        got = workload_runner.op_times(space.SerializeToString())
        self.assertEqual(set(got), {"_MklMatMul", "Tanh"})
        self.assertAlmostEqual(got["_MklMatMul"], 5e-6)
        self.assertAlmostEqual(got["Tanh"], 1e-6)

    def test_profile_of_a_train_step(self):
        api = workload_runner.Api()
        result = workload_runner.run_job(
            api, "stage1_tiny", ["float32"], 2, smoke=True, profile=True
        )
        ops = result["variants"]["float32"]["ops"]
        self.assertEqual(ops["calls"], 2)
        self.assertGreater(ops["matmul_seconds"], 0)
        self.assertGreater(ops["op_seconds"], ops["matmul_seconds"])
        self.assertTrue(set(ops["top"]) & workload_runner.MATMUL_OPS, ops["top"])


class BadInputTest(TestCase):
    def test_unknown_workload_or_group(self):
        with self.assertRaisesRegex(ValueError, "unknown benchmark workload or group 'stage3'"):
            benchmark.run_all(workloads=["stage3"])
        with self.assertRaisesRegex(ValueError, "unknown workload 'decode'; valid: .*stage1_tiny"):
            workload_runner.workload_config("decode")

    def test_groups_and_names_select_in_table_order(self):
        got = benchmark.select_workloads(["sampling_256", "stage1"])
        self.assertEqual(got, ["stage1_tiny", "stage1_64", "sampling_256"])

    def test_unknown_variant(self):
        with self.assertRaisesRegex(ValueError, r"unknown or no variants \['bf16'\]; valid"):
            benchmark.run_all(workloads=["encode"], variants=["float32", "bf16"])
        with self.assertRaisesRegex(SystemExit, r"unknown variants \['fp8'\]"):
            workload_runner.main(["--workloads=encode_tiny", "--variants=fp8"])
        with self.assertRaisesRegex(ValueError, "must include 'float32'"):
            benchmark.run_all(baseline=benchmark.this_tree(), baseline_variants=["defaults"])

    def test_baseline_that_is_not_a_vim_tf_tree(self):
        path = self.get_temp_dir()
        with self.assertRaisesRegex(ValueError, re.escape(f"--baseline='{path}' is not a vim_tf")):
            benchmark.run_all(workloads=["encode"], baseline=path)

    def test_runner_refuses_a_tree_it_did_not_import_from(self):
        other = self.get_temp_dir()
        with self.assertRaisesRegex(SystemExit, re.escape(f"not from --tree={other}")):
            workload_runner.main([f"--tree={other}", "--workloads=encode_tiny"])


class SmokeRunTest(TestCase):
    """Every workload at minuscule sizes, this tree against itself as the baseline."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.saved = []
        cls.report = benchmark.run_all(
            on_row=lambda report: cls.saved.append(len(report["rows"])),
            smoke=True,
            one_process=True,
            variants=["defaults"],
            baseline=benchmark.this_tree(),
            repeats=2,
        )

    def test_json_shape(self):
        path = os.path.join(self.get_temp_dir(), "bench.json")
        fs.write_json(path, self.report)
        loaded = json.loads(fs.read_text(path))
        self.assertEqual(set(loaded), {"machine", "trees", "plan", "rows"})
        self.assertEqual(loaded["machine"]["tensorflow"], tf.__version__)
        self.assertEqual(loaded["machine"]["cpu_count"], os.cpu_count())
        self.assertEqual([r["workload"] for r in loaded["rows"]], list(workload_runner.WORKLOADS))
        self.assertEqual(self.saved, list(range(1, len(loaded["rows"]) + 1)))  # after each row
        for side in ("current", "baseline"):
            tree = loaded["trees"][side]
            self.assertEqual(tree["path"], benchmark.this_tree())
            self.assertEqual(tree["api"], "new")
            self.assertEqual(tree["defaults"]["policy"], precision.DEFAULT_POLICY)
            self.assertEqual(tree["defaults"]["train_jit_compile"], trainer.DEFAULT_JIT_COMPILE)

    def test_figures_and_ratios(self):
        for row in self.report["rows"]:
            kind, cfg = workload_runner.workload_config(row["workload"], smoke=True)
            self.assertEqual(row["flops_per_call"], flops.workload_flops(kind, cfg))
            self.assertEqual(set(row["current"]), {"defaults"})
            self.assertEqual(set(row["baseline"]), {"float32"})
            base = row["baseline"]["float32"]["throughput"]
            count, _ = flops.workload_units(kind, cfg)
            for variant, m in row["current"].items():
                self.assertLen(m["times"], 2)
                self.assertEqual(m["seconds"], statistics.median(m["times"]))
                self.assertAlmostEqual(m["throughput"], count / m["seconds"])
                self.assertAlmostEqual(row["ratio_to_baseline"][variant], m["throughput"] / base)
                self.assertAlmostEqual(
                    m["fraction_of_peak"], m["achieved_gflops"] / m["peak_gflops"]
                )
            # Train steps run under the training default; the encode and sampling tools set no
            # training policy, so their defaults run in float32.
            want = precision.DEFAULT_POLICY if kind in ("stage1", "prior") else "float32"
            self.assertEqual(row["current"]["defaults"]["policy"], want)

    def test_table(self):
        lines = benchmark.table(self.report).splitlines()
        self.assertLen(lines, len(self.report["rows"]) + 2)
        row = self.report["rows"][0]
        cells = lines[2].split(" | ")
        self.assertEqual(cells[1], benchmark.fmt(row["baseline"]["float32"]["throughput"]))
        self.assertEqual(cells[6], f"{row['ratio_to_baseline']['defaults']:.2f}x")
        self.assertLen(benchmark.peak_table(self.report).splitlines(), len(lines))
