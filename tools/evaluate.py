"""Scores a trained model over its test split and writes one JSON object.

python tools/evaluate.py --model_dir=runs/q --output=runs/q/metrics.json
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("model_dir", None, "A trained model dir (holds config.gin and ckpt-*).")
flags.DEFINE_string("output", None, "Where the metrics JSON goes.")
flags.DEFINE_string("classifier", None, "A classifier model dir (scores a prior's samples).")
flags.DEFINE_integer("num_samples", 100, "Samples per class for class_accuracy.")
flags.mark_flags_as_required(["model_dir", "output"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from vim_tf.eval import evaluator

    evaluator.evaluate(FLAGS.model_dir, FLAGS.output, FLAGS.classifier, FLAGS.num_samples)


if __name__ == "__main__":
    app.run(main)
