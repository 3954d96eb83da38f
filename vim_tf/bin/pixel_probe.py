"""The linear probe's raw-pixel baseline: logistic regression on the pixels of the same split.

vim-pixel-probe --model_dir=runs/demo/prior_uncond --output=runs/demo/pixel_probe.json
(or, without a trained prior, --gin_file=experiments/digits_vim_uncond.gin). Writes
{"top1": test accuracy, "train_top1", "dataset", "image_size", "train_split", "test_split", ...}.

The `vim-pixel-probe` console script; also `python -m vim_tf.bin.pixel_probe` and `python tools/pixel_probe.py`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import flags  # noqa: E402

from vim_tf.utils import cli  # noqa: E402
from vim_tf.utils import model_dir as model_dir_lib  # noqa: E402

flags.DEFINE_string(
    "model_dir", None, "A trained prior's model dir: the splits and image size of its probe."
)
flags.DEFINE_multi_string(
    "gin_file",
    ["experiments/digits_vim_uncond.gin"],
    "Without --model_dir: the prior's experiment, which names the dataset and the splits.",
)
flags.DEFINE_multi_string("gin_bindings", [], 'gin bindings, e.g. "IMAGE_SIZE = 16".')
flags.DEFINE_string("output", None, "Where the JSON goes.")
flags.DEFINE_bool(
    "standardize", False, "Standardize each pixel with the train split's mean and std first."
)
flags.mark_flag_as_required("output")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if FLAGS.model_dir:
        # Checked before TensorFlow loads: a wrong dir fails in a fraction of a second.
        model_dir_lib.check_model_dir(
            FLAGS.model_dir, ("prior",), "the linear probe's splits are a prior's (a VIM model dir)"
        )
    from vim_tf.reports import pixel_probe

    result = pixel_probe.run_pixel_probe(
        FLAGS.output, FLAGS.model_dir, FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.standardize
    )
    print(f"raw-pixel logistic regression: test top-1 {result['top1']:.4f} -> {FLAGS.output}")


def run():
    """Entry point of the `vim-pixel-probe` console script."""
    cli.run(main)


if __name__ == "__main__":
    run()
