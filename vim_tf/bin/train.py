"""Trains the quantizer, prior or classifier named by the gin experiment; resumes when rerun.

vim-train --gin_file=gin/experiments/digits_vitvqgan.gin --model_dir=runs/q

The `vim-train` console script; also `python -m vim_tf.bin.train` and `python tools/train.py`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import flags  # noqa: E402

from vim_tf.utils import cli  # noqa: E402
from vim_tf.utils import model_dir as model_dir_lib  # noqa: E402

flags.DEFINE_multi_string(
    "gin_file",
    [],
    "gin config files: a file path, or a config shipped with vim_tf by its name relative to the "
    "gin folder ('experiments/digits_vim.gin', also 'gin/experiments/...') or its file name.",
)
flags.DEFINE_multi_string("gin_bindings", [], "gin bindings, e.g. 'TRAIN_STEPS = 200'.")
flags.DEFINE_string("model_dir", None, "Where checkpoints, config and summaries go.")
flags.DEFINE_string("quantizer_dir", None, "A trained stage-1 model dir (for a prior).")
flags.DEFINE_enum(
    "strategy", "default", ["default", "mirrored", "multi_worker", "tpu"], "tf.distribute strategy."
)
flags.DEFINE_string("tpu", None, "TPU address for --strategy=tpu ('local' on a TPU VM).")
flags.mark_flag_as_required("model_dir")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if FLAGS.quantizer_dir:
        # Checked before TensorFlow loads: a wrong dir fails in a fraction of a second.
        model_dir_lib.check_model_dir(
            FLAGS.quantizer_dir,
            ("quantizer",),
            "--quantizer_dir must be a trained stage-1 model dir (a ViT-VQGAN)",
        )
    from vim_tf.training import train_lib

    train_lib.run(
        FLAGS.model_dir,
        FLAGS.gin_file,
        FLAGS.gin_bindings,
        FLAGS.strategy,
        FLAGS.tpu,
        FLAGS.quantizer_dir,
    )


def run():
    """Entry point of the `vim-train` console script."""
    cli.run(main)


if __name__ == "__main__":
    run()
