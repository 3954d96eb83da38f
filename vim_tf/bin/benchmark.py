"""Measures training, encoding and sampling throughput on this machine; writes JSON.

vim-benchmark --output=bench.json [--quick] [--only=stage1,flops]

Prints each figure as it is measured, then a markdown table of all of them (the README's
Benchmarks section). Every figure is a median of timed repetitions after a warm-up; variants
compared with each other (float32 vs mixed_bfloat16, XLA off vs on) are timed in turns.

The `vim-benchmark` console script; also `python -m vim_tf.bin.benchmark` and `python tools/benchmark.py`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from vim_tf.utils import cli  # noqa: E402

flags.DEFINE_string("output", "bench.json", "Where the results JSON goes.")
flags.DEFINE_bool("quick", False, "2 timed repetitions instead of 5 (a fast, noisier run).")
flags.DEFINE_list(
    "only",
    [],
    "Measurement groups to run (default: all): stage1, stage1_ss, encode, stage2, sampling, flops.",
)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import tensorflow as tf

    from vim_tf.reports import benchmark
    from vim_tf.utils import model_dir

    # Every measurement traces a fresh model: TF's retracing warnings are expected here.
    tf.get_logger().setLevel("ERROR")

    results = benchmark.run_all(quick=FLAGS.quick, groups=FLAGS.only or None)
    machine = results["machine"]
    print(
        f"\n{machine['cpu_count']} CPU cores, TensorFlow {machine['tensorflow']}, "
        f"Python {machine['python']}\n"
    )
    print(benchmark.table(results))
    model_dir.write_json(FLAGS.output, results)
    print(f"wrote {FLAGS.output}")


def run():
    """Entry point of the `vim-benchmark` console script."""
    cli.run(main)


if __name__ == "__main__":
    run()
