"""Runs rows of the paper's Table 4 (quantizer ablations) at small scale and writes the table.

vim-ablate --output_dir=runs/ablation --train_steps=1600 --seeds=2
Writes OUTPUT_DIR/ablation.md, .csv, .json and .png (rebuilt after every run) and one model dir
and result per (row, restarts, seed); rerunning the same command runs only the missing ones.

The `vim-ablate` console script; also `python -m vim_tf.bin.ablate` and `python tools/ablate.py`.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import flags  # noqa: E402

from vim_tf.reports import ablation  # noqa: E402
from vim_tf.utils import cli  # noqa: E402

flags.DEFINE_string("output_dir", None, "Where the runs, their results and the table go.")
flags.DEFINE_multi_string(
    "gin_file",
    [ablation.DEFAULT_GIN_FILE],
    "The base experiment every row builds on (a file, or a shipped config by name, e.g. "
    "experiments/photos_vitvqgan.gin).",
)
flags.DEFINE_multi_string("gin_bindings", [], "gin bindings for every run, e.g. 'BATCH_SIZE = 32'.")
flags.DEFINE_string("dataset", None, "Overrides the base experiment's DATASET, e.g. 'photos'.")
flags.DEFINE_list(
    "rows",
    list(ablation.DEFAULT_ROWS),
    f"Rows to run, in table order whatever the order here: {', '.join(ablation.ROWS)}.",
)
flags.DEFINE_list(
    "restarts",
    list(ablation.RESTARTS),
    "Dead-code restarts: 'off' (the paper's quantizer), 'on' (the digits recipe's), or both.",
)
flags.DEFINE_integer("seeds", 2, "Seeds per row and restart setting (seeds 0..N-1).")
flags.DEFINE_integer(
    "train_steps", None, "Step budget of every run (default: the base experiment's TRAIN_STEPS)."
)
flags.DEFINE_string(
    "classifier_dir",
    None,
    "rFID network: a vim_tf classifier model dir. On digits it is trained there with "
    "experiments/digits_classifier.gin when it holds none (default: "
    "OUTPUT_DIR/digits/classifier).",
)
flags.DEFINE_multi_string(
    "classifier_bindings", [], "gin bindings for training the digits classifier."
)
flags.DEFINE_string(
    "inception_weights",
    None,
    "rFID network for any dataset: an Inception v3 file or dir (formats as tools/evaluate.py "
    "--classifier). Without it (or --classifier_dir), rFID on datasets other than digits is "
    "not computed; nothing is downloaded.",
)
flags.DEFINE_bool(
    "table_only", False, "Only rebuild the table from the results in --output_dir; train nothing."
)
flags.mark_flag_as_required("output_dir")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if FLAGS.table_only:
        table = ablation.write_table(FLAGS.output_dir)
    else:
        # Checked before TensorFlow loads: a bad selection fails in a fraction of a second.
        ablation.check_args(FLAGS.rows, FLAGS.restarts, FLAGS.seeds, FLAGS.train_steps)
        try:
            table = _run()
        except ablation.RunsFailed as e:
            print(ablation.to_markdown(ablation.build_table(FLAGS.output_dir)))
            print(f"error: {e}", file=sys.stderr)
            return 1
    print(ablation.to_markdown(table))
    print(f"written: {', '.join(ablation.output_paths(FLAGS.output_dir))}")
    return 0


def _run():
    return ablation.run_ablation(
        ablation.Ablation(
            output_dir=FLAGS.output_dir,
            gin_files=tuple(FLAGS.gin_file),
            gin_bindings=tuple(FLAGS.gin_bindings),
            dataset=FLAGS.dataset,
            rows=tuple(FLAGS.rows),
            restarts=tuple(FLAGS.restarts),
            seeds=FLAGS.seeds,
            train_steps=FLAGS.train_steps,
            classifier_dir=FLAGS.classifier_dir,
            classifier_bindings=tuple(FLAGS.classifier_bindings),
            inception_weights=FLAGS.inception_weights,
        )
    )


def run():
    """Entry point of the `vim-ablate` console script."""
    cli.run(main)


if __name__ == "__main__":
    run()
