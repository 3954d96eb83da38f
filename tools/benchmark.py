"""Measures training, encoding and sampling throughput on this machine; writes JSON.

python tools/benchmark.py --output=bench.json [--quick]
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("output", "bench.json", "Where the results JSON goes.")
flags.DEFINE_bool("quick", False, "Fewer repetitions (a smoke run).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from vim_tf import benchmark
    from vim_tf.utils import model_dir

    results = benchmark.run_all(quick=FLAGS.quick)
    model_dir.write_json(FLAGS.output, results)
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
