"""Writes the image tokens of a trained quantizer once, as shards a prior can train on.

  vim-encode --quantizer_dir=runs/q --output_dir=runs/tokens [--splits=train,test] \
      [--strategy=default|mirrored|multi_worker|tpu] [--tpu=ADDR] [--shard_size=10000] \
      [--overwrite]

Each split is written in TFRecord shards as it is encoded (OUT/<split>-NNNNN-of-MMMMM.tfrecord
and OUT/<split>_manifest.json); rerunning a killed run's command encodes only the missing shards.
Then train a prior on them with gin/experiments/digits_vim_tokens.gin (TOKEN_DIR = ...).

The `vim-encode` console script; also `python -m vim_tf.bin.encode` and `python tools/encode.py`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import flags  # noqa: E402

from vim_tf.utils import cli  # noqa: E402
from vim_tf.utils import model_dir as model_dir_lib  # noqa: E402

flags.DEFINE_string("quantizer_dir", None, "A trained quantizer model dir.")
flags.DEFINE_string("output_dir", None, "Where the token shards go.")
flags.DEFINE_list("splits", ["train", "test"], "Splits to encode.")
flags.DEFINE_integer("batch_size", 256, "Images per encoding batch (global: all replicas).")
cli.define_strategy_flags("each local replica encodes its share of every batch")
cli.define_shard_flags("Images (default 10,000)")
flags.mark_flags_as_required(["quantizer_dir", "output_dir"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    # Checked before TensorFlow loads: a wrong dir fails in a fraction of a second.
    model_dir_lib.check_model_dir(
        FLAGS.quantizer_dir,
        ("quantizer",),
        "tools/encode.py encodes images with a trained quantizer (a ViT-VQGAN model dir)",
    )
    from vim_tf.data import tokens
    from vim_tf.training import distribute

    strategy = distribute.get_strategy(FLAGS.strategy, FLAGS.tpu)
    counts = tokens.encode_splits(
        FLAGS.quantizer_dir,
        FLAGS.output_dir,
        FLAGS.splits,
        FLAGS.batch_size,
        strategy=None if FLAGS.strategy == "default" else strategy,
        examples_per_shard=FLAGS.shard_size or tokens.DEFAULT_EXAMPLES_PER_SHARD,
        overwrite=FLAGS.overwrite,
    )
    if counts is not None:
        print(f"wrote {counts} to {FLAGS.output_dir}")


def run():
    """Entry point of the `vim-encode` console script."""
    cli.run(main)


if __name__ == "__main__":
    run()
