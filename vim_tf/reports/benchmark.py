"""Throughput of the training, encoding and sampling workloads, against a baseline source tree.

`run_all` times each workload (`workload_runner.WORKLOADS`) in fresh processes of
`workload_runner.py`, one per tree and workload: this tree's process times the variants float32,
float32 + XLA, mixed_bfloat16 and "defaults" (what a user gets without flags) in turns; with a
baseline tree (e.g. a git worktree of an earlier commit), a process of that tree times its
float32 variant, and the two trees' processes alternate (A, B, A, B, ... over `rounds`), so
background load on a shared machine hits both alike. Each figure is the median of every timed
call of a variant across the rounds, after one warm-up call per process.

Each row also gives, per variant, the achieved matmul FLOP/s (`flops.workload_flops` over the
median time) as a fraction of a dense n x n matmul's FLOP/s in the variant's compute dtype,
timed in the same process in turns with the steps: how close to the hardware each step runs.

Ratios: a current variant's throughput over the baseline's float32 throughput (graph-mode train
step, non-XLA sampler, plain `tf.function` encode); above 1 is faster.
"""

import json
import os
import platform
import statistics
import subprocess
import sys

import tensorflow as tf

from vim_tf.reports import flops as flops_lib
from vim_tf.reports import workload_runner
from vim_tf.reports.workload_runner import VARIANTS, WORKLOADS, timed, timed_interleaved
from vim_tf.utils import fs

__all__ = ["run_all", "table", "timed", "timed_interleaved", "GROUPS", "VARIANTS", "WORKLOADS"]

# --only accepts these group names as well as workload names.
GROUPS = {
    "stage1": ("stage1_tiny", "stage1_64"),
    "stage1_ss": ("stage1_ss",),
    "encode": ("encode_tiny",),
    "stage2": ("prior_train",),
    "sampling": ("sampling_256", "sampling_1024"),
}
RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workload_runner.py")
# Timed calls per variant per process, for a full run and a --quick one (sampling a whole
# 1024-token batch takes seconds per call).
REPEATS = {"full": {"sampling": 3, "other": 6}, "quick": {"sampling": 3, "other": 4}}
ROUNDS = {"full": 2, "quick": 1}


def select_workloads(names=None):
    """Workload names from workload and group names (default: all, in table order)."""
    if not names:
        return list(WORKLOADS)
    chosen = set()
    for name in names:
        if name in GROUPS:
            chosen.update(GROUPS[name])
        elif name in WORKLOADS:
            chosen.add(name)
        else:
            raise ValueError(
                f"unknown benchmark workload or group {name!r}; valid workloads: "
                f"{list(WORKLOADS)}, groups: {list(GROUPS)}"
            )
    return [w for w in WORKLOADS if w in chosen]


def check_variants(variants, what="variants"):
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise ValueError(f"unknown or no {what} {list(bad)}; valid: {list(VARIANTS)}")
    return list(variants)


def this_tree():
    """The source tree (or site-packages) the running `vim_tf` was imported from."""
    import vim_tf

    return os.path.dirname(os.path.dirname(os.path.abspath(vim_tf.__file__)))


def check_tree(path):
    """`path` made absolute, if it holds a vim_tf source tree; else ValueError."""
    tree = os.path.abspath(os.path.expanduser(path))
    need = [os.path.join("vim_tf", "__init__.py"), os.path.join("vim_tf", "models", "vitvqgan.py")]
    missing = [p for p in need if not fs.exists(os.path.join(tree, p))]
    if missing:
        raise ValueError(
            f"--baseline={path!r} is not a vim_tf source tree ({missing} missing); pass the root "
            "of a checkout, e.g. a `git worktree add /tmp/base <commit>`"
        )
    return tree


def git_commit(tree):
    """The short commit of a git checkout, or None."""
    try:
        out = subprocess.run(
            ["git", "-C", tree, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_process(
    tree, workloads, variants, repeats, smoke=False, matmul_n=2048, python=None, profile_ops=False
):
    """Runs `workload_runner.py` in a fresh process with `tree` first on the path (with
    `profile_ops`, its graph-mode variants are profiled too: `workload_runner.op_profile`).

    Returns:
      The list of its job results (one per workload).

    Raises:
      RuntimeError: the process failed (with the end of its stderr).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([tree] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cmd = [python or sys.executable, RUNNER, f"--tree={tree}", f"--workloads={','.join(workloads)}"]
    cmd += [f"--variants={','.join(variants)}", f"--repeats={repeats}", f"--matmul_n={matmul_n}"]
    cmd += ["--smoke"] if smoke else []
    cmd += ["--profile_ops"] if profile_ops else []
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    results = [
        json.loads(line[len("RESULT ") :])
        for line in proc.stdout.splitlines()
        if line.startswith("RESULT ")
    ]
    if proc.returncode or len(results) != len(workloads):
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(
            f"the benchmark runner failed on tree {tree} (exit code {proc.returncode}): "
            f"{' '.join(cmd)}\n{tail}"
        )
    return results


def _pool(jobs):
    """Job results of one tree and workload over the rounds -> (variants, matmul) with every
    round's timed calls pooled."""
    variants, matmul = {}, {}
    for job in jobs:
        for name, info in job["variants"].items():
            kept = {k: v for k, v in info.items() if k not in ("times", "ops")}
            merged = variants.setdefault(name, kept)
            if "times" in info:
                merged.setdefault("times", []).extend(info["times"])
            if "ops" in info:
                merged.setdefault("ops_rounds", []).append(info["ops"])
        for dtype, info in job["matmul"].items():
            matmul.setdefault(dtype, {"n": info["n"], "times": []})["times"].extend(info["times"])
    return variants, matmul


def measure(kind, cfg, jobs):
    """Per-variant figures of one tree's jobs of one workload: dict variant -> {seconds,
    throughput, achieved_gflops, peak_gflops, fraction_of_peak, policy, compute_dtype, jit,
    times} (or {error})."""
    step_flops = flops_lib.workload_flops(kind, cfg)
    count, _ = flops_lib.workload_units(kind, cfg)
    variants, matmul = _pool(jobs)
    out = {}
    for name, info in variants.items():
        if "error" in info or not info.get("times"):
            out[name] = {"error": info.get("error", "not timed")}
            continue
        seconds = statistics.median(info["times"])
        info = dict(info)
        rounds = info.pop("ops_rounds", None)
        if rounds:
            info["ops"] = {
                "matmul_seconds": statistics.median(r["matmul_seconds"] for r in rounds),
                "op_seconds": statistics.median(r["op_seconds"] for r in rounds),
                "top": rounds[0]["top"],
                "rounds": len(rounds),
            }
        mm = matmul[info["compute_dtype"]]
        peak = flops_lib.matmul_flops(mm["n"]) / statistics.median(mm["times"]) / 1e9
        achieved = step_flops / seconds / 1e9
        out[name] = dict(
            info,
            seconds=seconds,
            throughput=count / seconds,
            achieved_gflops=achieved,
            peak_gflops=peak,
            fraction_of_peak=achieved / peak,
        )
    return out


def describe(kind, cfg):
    """The row label of a workload at its sizes (without the batch)."""
    if kind in ("stage1", "encode"):
        s = cfg["stack"]
        what = "stage-1 train step" if kind == "stage1" else "stage-1 encode"
        return (
            f"{what}, {cfg['image_size']} px p{cfg['patch_size']}, {s['hidden_dim']} wide, "
            f"{s['num_layers']}+{s['num_layers']} blocks, "
            f"{cfg['codebook_size']}x{cfg['code_dim']} codes"
        )
    s, seq = cfg["stack"], cfg["grid_size"] ** 2
    what = "prior train step" if kind == "prior" else "prior sampling (KV cache)"
    return (
        f"{what}, {s['hidden_dim']} wide x {s['num_layers']} layers, vocab "
        f"{cfg['codebook_size']}, {seq} tokens"
    )


class _Plan:
    """How one run measures: model sizes, rounds, timed calls per process, the peak matmul."""

    def __init__(self, quick, smoke, rounds, repeats, matmul_n, python, profile_ops=False):
        speed = "quick" if quick or smoke else "full"
        self.profile_ops = profile_ops
        self.smoke = smoke
        self.rounds = rounds or ROUNDS[speed]
        self.repeats = repeats
        self.speed = speed
        self.matmul_n = matmul_n or (128 if smoke else 2048)
        self.python = python

    def repeats_for(self, kind):
        if self.repeats:
            return self.repeats
        return REPEATS[self.speed]["sampling" if kind == "sampling" else "other"]

    def run(self, tree, workloads, variants):
        kinds = [workload_runner.workload_config(w)[0] for w in workloads]
        repeats = max(self.repeats_for(kind) for kind in kinds)
        args = (repeats, self.smoke, self.matmul_n, self.python)
        # Only this tree's variants are profiled (the baseline is the reference, not the subject).
        profile = self.profile_ops and tree == this_tree()
        return run_process(tree, workloads, variants, *args, profile_ops=profile)


def _row(workload, plan, jobs, baseline):
    kind, cfg = workload_runner.workload_config(workload, plan.smoke)
    row = {
        "workload": workload,
        "kind": kind,
        "label": describe(kind, cfg),
        "batch": cfg["batch"],
        "unit": flops_lib.workload_units(kind, cfg)[1],
        "flops_per_call": flops_lib.workload_flops(kind, cfg),
        "current": measure(kind, cfg, jobs["current"]),
    }
    if baseline:
        row["baseline"] = measure(kind, cfg, jobs["baseline"])
        base = row["baseline"].get("float32", {}).get("throughput")
        row["ratio_to_baseline"] = {
            v: (m["throughput"] / base if base and "throughput" in m else None)
            for v, m in row["current"].items()
        }
        base_seconds = row["baseline"].get("float32", {}).get("seconds")
        for m in row["current"].values():
            ops = m.get("ops")
            if ops and base_seconds and ops["matmul_seconds"] > 0:
                # The ratio the variant would reach if everything but its products took no time.
                ops["bound_ratio"] = base_seconds / ops["matmul_seconds"]
    return row


def _print_row(row):
    for side in ("baseline", "current"):
        for variant, m in row.get(side, {}).items():
            name = f"{row['label']} ({row['batch']}), {side} {variant}"
            if "error" in m:
                print(f"{name}: failed: {m['error']}", flush=True)
                continue
            ratio = row.get("ratio_to_baseline", {}).get(variant) if side == "current" else None
            print(
                f"{name}: {fmt(m['throughput'])} {row['unit']}, {m['achieved_gflops']:.1f} "
                f"GFLOP/s = {100 * m['fraction_of_peak']:.0f}% of the {m['compute_dtype']} "
                f"matmul" + (f"; {ratio:.2f}x baseline float32" if ratio else ""),
                flush=True,
            )


def _process_plan(workloads, one_process):
    """Groups of workloads run by one process per tree (each group: A, B per round)."""
    return [list(workloads)] if one_process else [[w] for w in workloads]


def run_all(
    workloads=None,
    variants=VARIANTS,
    baseline=None,
    baseline_variants=("float32",),
    quick=False,
    smoke=False,
    rounds=None,
    repeats=None,
    one_process=False,
    matmul_n=None,
    python=None,
    on_row=None,
    profile_ops=False,
):
    """Measures `workloads` (workload or group names; default all) and prints each row.

    Args:
      variants: variants of this tree (of VARIANTS).
      baseline: path of another vim_tf source tree to compare with, or None.
      baseline_variants: variants timed on the baseline (the ratios need float32).
      quick: fewer timed calls and one round (a fast, noisier run).
      smoke: minuscule model sizes (tests: every code path in seconds; numbers meaningless).
      rounds, repeats: override the alternations A, B per workload and the timed calls per
        process.
      one_process: one process per tree and round for all workloads (faster, less isolated;
        each times the largest repeat count of its workloads).
      matmul_n: size of the peak matmul (default 2048; 128 with `smoke`).
      python: the interpreter of the runner processes (default: this one).
      on_row: called with the report so far after each row (e.g. to save a partial run).
      profile_ops: also profile this tree's graph-mode variants (`ops` in their figures: seconds
        per call of the matrix products and of all ops; with a baseline, `bound_ratio`, the
        ratio to the baseline if only the products took time). See `ops_table`.

    Returns:
      {"machine", "trees", "defaults", "rows": [{workload, kind, label, batch, unit,
      flops_per_call, current: {variant: figures}, baseline, ratio_to_baseline}]}.
    """
    names = select_workloads(workloads)
    variants = check_variants(variants)
    trees = {"current": this_tree()}
    if baseline:
        trees["baseline"] = check_tree(baseline)
        if "float32" not in check_variants(baseline_variants, "baseline variants"):
            raise ValueError("baseline_variants must include 'float32' (the ratios' reference)")
    plan = _Plan(quick, smoke, rounds, repeats, matmul_n, python, profile_ops)
    report = {
        "machine": machine(),
        "trees": {k: {"path": t, "commit": git_commit(t)} for k, t in trees.items()},
        "plan": {"rounds": plan.rounds, "speed": plan.speed, "matmul_n": plan.matmul_n},
        "rows": [],
    }
    for group in _process_plan(names, one_process):
        jobs = {side: {w: [] for w in group} for side in trees}
        for _ in range(plan.rounds):
            for side, tree in trees.items():
                side_variants = variants if side == "current" else baseline_variants
                for result in plan.run(tree, group, side_variants):
                    jobs[side][result["workload"]].append(result)
                    report["trees"][side]["defaults"] = result["defaults"]
                    report["trees"][side]["api"] = result["api"]
        for w in group:
            row = _row(w, plan, {side: jobs[side][w] for side in trees}, baseline)
            report["rows"].append(row)
            _print_row(row)
            if on_row:
                on_row(report)
    return report


def machine():
    """CPU model, core count, TensorFlow and Python versions of this machine."""
    cpu = platform.processor() or platform.machine()
    if fs.exists("/proc/cpuinfo"):
        for line in fs.read_text("/proc/cpuinfo").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
    }


def fmt(value):
    """A throughput for the table: thousands separators, decimals only for small numbers."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def _cell(row, variant):
    m = row["current"].get(variant)
    if m is None:
        return ""
    if "error" in m:
        return "-"
    ratio = row.get("ratio_to_baseline", {}).get(variant)
    return f"{fmt(m['throughput'])}" + (f" ({ratio:.2f}x)" if ratio else "")


def _peak_cell(m):
    if not m or "error" in m:
        return "-"
    return f"{100 * m['fraction_of_peak']:.0f}% of {m['compute_dtype']}"


def table(report):
    """The rows as a markdown table: throughput per variant (ratio to the baseline float32 in
    parentheses), the defaults' ratio, and the defaults' achieved fraction of the matmul peak."""
    head = (
        "| workload (batch) | baseline float32 | float32 | float32+XLA | mixed_bfloat16 "
        "| defaults | ratio defaults/baseline | achieved/peak (defaults) |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        base = row.get("baseline", {}).get("float32")
        base_cell = "" if base is None else "-" if "error" in base else fmt(base["throughput"])
        ratio = row.get("ratio_to_baseline", {}).get("defaults")
        cells = [f"{row['label']} ({row['batch']}), {row['unit']}", base_cell]
        cells += [_cell(row, v) for v in VARIANTS]
        cells += [f"{ratio:.2f}x" if ratio else "", _peak_cell(row["current"].get("defaults"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def peak_table(report):
    """Achieved GFLOP/s and fraction of the matmul peak of every measured variant."""
    lines = ["| workload (batch) | GFLOP per call | " + " | ".join(VARIANTS) + " |"]
    lines.append("|---|---|" + "---|" * len(VARIANTS))
    for row in report["rows"]:
        cells = [f"{row['label']} ({row['batch']})", f"{row['flops_per_call'] / 1e9:.3g}"]
        for v in VARIANTS:
            m = row["current"].get(v)
            if m is None or "error" in m:
                cells.append("" if m is None else "-")
            else:
                cells.append(f"{m['achieved_gflops']:.3g} GFLOP/s, {_peak_cell(m)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ops_table(report):
    """The profiled variants: step time, the time of its matrix products and of all its ops per
    call, and how far the ratio to the baseline could go if only the products remained."""
    lines = [
        "| workload (batch) | variant | step ms | products ms | all ops ms | costliest other ops "
        "| ratio to baseline | bound: products only |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        for variant, m in row["current"].items():
            ops = m.get("ops")
            if not ops:
                continue
            others = [(k, v) for k, v in ops["top"].items() if k not in workload_runner.MATMUL_OPS]
            ratio = row.get("ratio_to_baseline", {}).get(variant)
            bound = ops.get("bound_ratio")
            cells = [
                f"{row['label']} ({row['batch']})",
                variant,
                f"{1e3 * m['seconds']:.0f}",
                f"{1e3 * ops['matmul_seconds']:.0f}",
                f"{1e3 * ops['op_seconds']:.0f}",
                ", ".join(f"{k} {1e3 * v:.0f}" for k, v in others[:4]),
                f"{ratio:.2f}x" if ratio else "",
                f"{bound:.2f}x" if bound else "",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
