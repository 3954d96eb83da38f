"""Measures training, encoding and sampling throughput on this machine, optionally against a
baseline source tree; writes JSON.

vim-benchmark --output=bench.json [--baseline=/path/to/old/checkout] [--quick] [--only=stage1]

Each workload runs in fresh processes (this tree's variants float32, float32 + XLA,
mixed_bfloat16 and the defaults in turns; with --baseline, that tree's float32 in processes
alternating with this tree's). Prints each row as it is measured, then a markdown table (the
README's Benchmarks section) and the achieved fraction of the dense matmul peak per variant.

The `vim-benchmark` console script; also `python -m vim_tf.bin.benchmark` and `python tools/benchmark.py`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from vim_tf.utils import cli  # noqa: E402

flags.DEFINE_string("output", "bench.json", "Where the results JSON goes.")
flags.DEFINE_bool("quick", False, "Fewer timed calls and one round (a fast, noisier run).")
flags.DEFINE_list(
    "only",
    [],
    "Workloads or groups to run (default: all). Groups: stage1 (stage1_tiny, stage1_64), "
    "stage1_ss, encode (encode_tiny), stage2 (prior_train), sampling (sampling_256, "
    "sampling_1024).",
)
flags.DEFINE_string(
    "baseline",
    None,
    "A vim_tf source tree (e.g. a git worktree of an older commit) to compare with.",
)
flags.DEFINE_list(
    "variants",
    ["float32", "float32_xla", "mixed_bfloat16", "defaults"],
    "Variants of this tree to time.",
)
flags.DEFINE_list("baseline_variants", ["float32"], "Variants of the baseline tree to time.")
flags.DEFINE_integer("rounds", None, "Alternations per workload (default 2; 1 with --quick).")
flags.DEFINE_integer("repeats", None, "Timed calls per variant and process (default by workload).")
flags.DEFINE_bool(
    "profile_ops",
    False,
    "Also profile this tree's graph-mode variants: the time of their matrix products and of "
    "all ops, and the ratio to the baseline if only the products took time.",
)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from vim_tf.reports import benchmark
    from vim_tf.utils import fs

    results = benchmark.run_all(
        workloads=FLAGS.only or None,
        variants=FLAGS.variants,
        baseline=FLAGS.baseline,
        baseline_variants=FLAGS.baseline_variants,
        quick=FLAGS.quick,
        rounds=FLAGS.rounds,
        repeats=FLAGS.repeats,
        # The rows so far are saved as they come: a long run stopped early keeps them.
        on_row=lambda report: fs.write_json(FLAGS.output, report),
        profile_ops=FLAGS.profile_ops,
    )
    machine = results["machine"]
    print(
        f"\n{machine['cpu']}, {machine['cpu_count']} cores, TensorFlow {machine['tensorflow']}, "
        f"Python {machine['python']}\n"
    )
    print(benchmark.table(results))
    print()
    print(benchmark.peak_table(results))
    if FLAGS.profile_ops:
        print()
        print(benchmark.ops_table(results))
    fs.write_json(FLAGS.output, results)
    print(f"wrote {FLAGS.output}")


def run():
    """Entry point of the `vim-benchmark` console script."""
    cli.run(main)


if __name__ == "__main__":
    run()
