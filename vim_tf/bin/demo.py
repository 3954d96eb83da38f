"""The main job on an embedded dataset: train, evaluate, summarize (reuses finished stages).

vim-demo --output_dir=runs/demo                           # the digits: every stage
vim-demo --dataset=photos --output_dir=runs/demo_photos   # photos: the stages without classes

The `vim-demo` console script; also `python -m vim_tf.bin.demo` and `python tools/demo.py`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import flags  # noqa: E402

from vim_tf.utils import cli  # noqa: E402

flags.DEFINE_string("output_dir", "runs/demo", "Where every stage's model dir goes.")
flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings for every stage.")
flags.DEFINE_string(
    "dataset",
    "digits",
    "The embedded dataset: 'digits' (every stage) or 'photos' (quantizer beside a k-means "
    "codebook of the same rate, unconditional prior and samples; no classifier stages).",
)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import sys

    from vim_tf import main_job

    try:
        main_job.run(FLAGS.output_dir, FLAGS.gin_bindings, dataset=FLAGS.dataset)
    except main_job.StageFailed as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1


def run():
    """Entry point of the `vim-demo` console script."""
    cli.run(main)


if __name__ == "__main__":
    run()
