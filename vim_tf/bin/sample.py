"""Draws samples from a trained VIM prior: OUT/samples.npz and OUT/grid.png.

  vim-sample --model_dir=runs/demo/prior --output_dir=runs/demo/samples \
      --num_samples=100 [--class_ids=0,1] [--temperature=1.0] [--top_k=0] [--top_p=1.0] \
      [--cfg_scale=1.0] [--seed=0] [--acceptance_rate=0.5 --classifier=runs/demo/classifier] \
      [--nojit_compile] [--strategy=default|mirrored|multi_worker|tpu] [--tpu=ADDR] \
      [--shard_size=1000] [--nomerge] [--overwrite]

Samples are written in shards as they are drawn (OUT/samples-NNNNN-of-MMMMM.npz and
OUT/samples_manifest.json); rerunning a killed run's command draws only the missing shards.

The `vim-sample` console script; also `python -m vim_tf.bin.sample` and `python tools/sample.py`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import flags  # noqa: E402

from vim_tf.utils import cli  # noqa: E402
from vim_tf.utils import model_dir as model_dir_lib  # noqa: E402

flags.DEFINE_string("model_dir", None, "A trained prior's model dir.")
flags.DEFINE_string("output_dir", None, "Where samples.npz and grid.png go.")
flags.DEFINE_integer("num_samples", 100, "Number of samples.")
flags.DEFINE_list("class_ids", [], "Classes to sample (default: all, evenly).")
cli.define_sampling_flags()
flags.DEFINE_integer("batch_size", 100, "Samples per batch.")
flags.DEFINE_float(
    "acceptance_rate",
    1.0,
    "Classifier rejection sampling: keep this fraction of the candidates per class (1: off).",
)
flags.DEFINE_string(
    "classifier",
    None,
    "Scoring network for rejection sampling (classifier model dir or SavedModel dir).",
)
cli.define_strategy_flags("each local replica samples its share of every batch")
cli.define_shard_flags("Samples (a multiple of --batch_size; default 10 batches)")
flags.DEFINE_bool(
    "merge",
    True,
    "Also write OUT/samples.npz with every sample (streamed from the shards); --nomerge keeps "
    "only the shards (e.g. 50,000 samples of 256x256 images).",
)
flags.DEFINE_bool(
    "jit_compile",
    None,
    "XLA-compile the sampling loop; default: on (vim_tf.sampling.settings.DEFAULT_JIT_COMPILE). "
    "--nojit_compile runs it in graph mode: slower, the same samples.",
)
flags.mark_flags_as_required(["model_dir", "output_dir"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    # Checked before TensorFlow loads: a wrong dir fails in a fraction of a second.
    model_dir_lib.check_model_dir(
        FLAGS.model_dir, ("prior",), "tools/sample.py samples from a prior (a VIM model dir)"
    )
    from vim_tf.eval import generate
    from vim_tf.sampling.settings import split_seed
    from vim_tf.training import distribute

    settings, seed = split_seed(cli.sampling_settings())
    strategy = distribute.get_strategy(FLAGS.strategy, FLAGS.tpu)
    generate.generate(
        FLAGS.model_dir,
        FLAGS.output_dir,
        FLAGS.num_samples,
        FLAGS.class_ids,
        settings=settings,
        seed=seed,
        batch_size=FLAGS.batch_size,
        acceptance_rate=FLAGS.acceptance_rate,
        classifier=FLAGS.classifier,
        jit_compile=FLAGS.jit_compile,
        strategy=None if FLAGS.strategy == "default" else strategy,
        shard_size=FLAGS.shard_size,
        merge=FLAGS.merge,
        overwrite=FLAGS.overwrite,
        return_arrays=False,
    )


def run():
    """Entry point of the `vim-sample` console script."""
    cli.run(main)


if __name__ == "__main__":
    run()
