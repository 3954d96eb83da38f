"""Exports a trained model dir as a versioned SavedModel for TF Serving, hub.load and TFSMLayer.

vim-export --model_dir=runs/p --export_dir=runs/export
Writes runs/export/<next version>/ (saved_model.pb, variables/, export_info.json) and prints it.

The `vim-export` console script; also `python -m vim_tf.bin.export` and `python tools/export.py`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import flags  # noqa: E402

from vim_tf.utils import cli  # noqa: E402
from vim_tf.utils import model_dir as model_dir_lib  # noqa: E402

flags.DEFINE_string(
    "model_dir", None, "A trained quantizer, prior or classifier model dir (holds ckpt-*)."
)
flags.DEFINE_string(
    "export_dir",
    None,
    "The model base path: the SavedModel goes to <export_dir>/<version>/, the version one more "
    "than the largest existing one.",
)
flags.mark_flags_as_required(["model_dir", "export_dir"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    # Checked before TensorFlow loads: a wrong dir fails in a fraction of a second.
    model_dir_lib.check_model_dir(
        FLAGS.model_dir,
        model_dir_lib.KINDS,
        "tools/export.py exports quantizers, priors and classifiers",
    )
    from vim_tf.export import exporter

    print(exporter.export_model_dir(FLAGS.model_dir, FLAGS.export_dir))


def run():
    """Entry point of the `vim-export` console script."""
    cli.run(main)


if __name__ == "__main__":
    run()
