"""Linear probe of a trained prior: a softmax layer on each block's frozen, token-averaged output.

vim-linear-probe --model_dir=runs/demo/prior_uncond --output=runs/demo/probe.json
Writes the JSON ({"layers": {L: top1}, "best_layer": L, "top1": acc, ...}) and probe.png beside it.

The `vim-linear-probe` console script; also `python -m vim_tf.bin.linear_probe` and `python tools/linear_probe.py`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import flags  # noqa: E402

from vim_tf.utils import cli  # noqa: E402
from vim_tf.utils import model_dir as model_dir_lib  # noqa: E402

flags.DEFINE_string("model_dir", None, "A trained prior's model dir (holds config.gin, ckpt-*).")
flags.DEFINE_string("output", None, "Where the probe JSON goes (the plot goes beside it).")
flags.DEFINE_list("layers", None, "1-based blocks to probe, e.g. 4,6,8 (default: every block).")
flags.mark_flags_as_required(["model_dir", "output"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    # Checked before TensorFlow loads: a wrong dir fails in a fraction of a second.
    model_dir_lib.check_model_dir(
        FLAGS.model_dir, ("prior",), "tools/linear_probe.py probes a prior (a VIM model dir)"
    )
    from vim_tf.eval import linear_probe

    linear_probe.run_linear_probe(FLAGS.model_dir, FLAGS.output, FLAGS.layers)


def run():
    """Entry point of the `vim-linear-probe` console script."""
    cli.run(main)


if __name__ == "__main__":
    run()
