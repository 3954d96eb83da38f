"""Scores a trained model over its test split and writes one JSON object.

vim-evaluate --model_dir=runs/q --output=runs/q/metrics.json
vim-evaluate --model_dir=runs/prior --classifier=runs/classifier --num_samples=50000 \
    --output=runs/prior/fid50k.json [--strategy=mirrored|multi_worker|tpu] [--tpu=ADDR]

A prior's samples are scored shard by shard: each shard's classifier activations (no image) go
to --shard_dir as they are computed, so a killed run, rerun with the same command, samples only
the missing shards, and the workers of a multi-worker run share them (the chief scores).

The `vim-evaluate` console script; also `python -m vim_tf.bin.evaluate` and `python tools/evaluate.py`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import app, flags  # noqa: E402

from vim_tf.utils import cli, fs  # noqa: E402
from vim_tf.utils import model_dir as model_dir_lib  # noqa: E402

flags.DEFINE_string("model_dir", None, "A trained model dir (holds config.gin and ckpt-*).")
flags.DEFINE_string(
    "saved_model",
    None,
    "Score an export instead: OUT/<version>/ written by "
    "tools/export.py (the artifact TF Serving serves).",
)
flags.DEFINE_string("output", None, "Where the metrics JSON goes.")
flags.DEFINE_string(
    "classifier",
    None,
    "Scoring network: a vim_tf classifier model dir, a SavedModel / TF Hub dir mapping "
    "images to {features, logits} or to {pool_3, logits} (TF-GAN's Inception), the FID "
    "code's frozen classify_image_graph_def.pb, or Keras InceptionV3 weights (*.h5). "
    "Nothing is downloaded; without it a prior gets no FID/IS/KID.",
)
flags.DEFINE_integer(
    "num_samples",
    1000,
    "Prior samples scored (every class evenly), streamed batch by batch through the classifier.",
)
flags.DEFINE_float("acceptance_rate", 1.0, "Classifier rejection sampling rate in (0, 1].")
cli.define_sampling_flags()
flags.DEFINE_string(
    "fid_floor_split",
    None,
    "Also score this real split against the test split (the FID floor), e.g. 'train'.",
)
cli.define_strategy_flags("each local replica samples its share of every batch of a prior")
flags.DEFINE_string(
    "shard_dir",
    None,
    "Where a prior's per-shard activations go (default: <output without .json>_activations "
    "beside --output). Classifier rejection sampling (--acceptance_rate < 1) is scored in "
    "memory without shards.",
)
flags.DEFINE_bool(
    "watch",
    False,
    "Follow a training model dir: score each new checkpoint "
    "(eval-<step>.json beside --output, TensorBoard, eval_history.csv/json in the "
    "model dir) until the final one.",
)
flags.DEFINE_integer("poll_seconds", 30, "With --watch: seconds between looks for checkpoints.")
flags.mark_flags_as_required(["output"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if FLAGS.model_dir and not FLAGS.saved_model:
        # Checked before TensorFlow loads: a wrong dir fails in a fraction of a second.
        # A watched dir may not hold a checkpoint yet.
        model_dir_lib.check_model_dir(
            FLAGS.model_dir,
            model_dir_lib.KINDS,
            "tools/evaluate.py scores quantizers, priors and classifiers",
            need_checkpoint=not FLAGS.watch,
        )
    from vim_tf.eval import evaluator

    sampling = cli.sampling_settings()
    if FLAGS.saved_model:
        evaluator.evaluate_export(
            FLAGS.saved_model,
            FLAGS.output,
            FLAGS.classifier,
            FLAGS.num_samples,
            FLAGS.acceptance_rate,
            sampling,
        )
        return
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir or --saved_model is required")
    if FLAGS.watch:
        from vim_tf.eval import watcher

        watcher.watch(
            FLAGS.model_dir,
            fs.dirname(fs.abspath(FLAGS.output)),
            FLAGS.poll_seconds,
            classifier=FLAGS.classifier,
            num_samples=FLAGS.num_samples,
            acceptance_rate=FLAGS.acceptance_rate,
            sampling=sampling,
        )
        return
    from vim_tf.training import distribute

    strategy = distribute.get_strategy(FLAGS.strategy, FLAGS.tpu)
    shard_dir = None
    if FLAGS.acceptance_rate == 1.0:
        shard_dir = FLAGS.shard_dir or default_shard_dir(FLAGS.output)
    evaluator.evaluate(
        FLAGS.model_dir,
        FLAGS.output,
        FLAGS.classifier,
        FLAGS.num_samples,
        FLAGS.acceptance_rate,
        FLAGS.fid_floor_split,
        sampling=sampling,
        strategy=None if FLAGS.strategy == "default" else strategy,
        shard_dir=shard_dir,
    )


def default_shard_dir(output):
    """<output without .json>_activations, beside `output`."""
    name = fs.basename(output)
    stem = name[: -len(".json")] if name.endswith(".json") else name
    return fs.join(fs.dirname(fs.abspath(output)), f"{stem}_activations")


def run():
    """Entry point of the `vim-evaluate` console script."""
    cli.run(main)


if __name__ == "__main__":
    run()
