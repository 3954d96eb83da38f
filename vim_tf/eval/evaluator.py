"""What `tools/evaluate.py` does: rebuild a trained model from its model dir and score it."""

import json
import os

import tensorflow as tf
from absl import logging

from vim_tf.config import gin_utils
from vim_tf.eval import quantizer_eval
from vim_tf.training import trainer
from vim_tf.utils import images as image_utils


def load_trained_model(model_dir):
    """Re-parses the model dir's config, builds the model and restores its newest checkpoint.

    Returns:
      (model, model_info dict, checkpoint path).
    """
    info = trainer.read_model_info(model_dir)
    gin_utils.load_model_dir_config(model_dir)
    model = trainer.create_model()
    model.build_all()
    path = trainer.restore_latest(model, model_dir)
    logging.info("restored %s (%s)", path, info.get("kind"))
    return model, info, path


def _write_json(path, obj):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def evaluate(model_dir, output):
    """Scores the model in `model_dir` and writes one JSON object to `output`."""
    model, info, path = load_trained_model(model_dir)
    kind = info.get("kind")
    if kind != "quantizer":
        raise ValueError(f"{model_dir!r} holds a {kind!r} model; evaluate.py scores quantizers")
    metrics = quantizer_eval.evaluate_quantizer(model)
    inputs, recs = metrics.pop("examples")
    grid_path = os.path.join(os.path.dirname(os.path.abspath(output)), "eval_reconstructions.png")
    grid = image_utils.make_grid(tf.concat([inputs, recs], 0).numpy(), rows=2)
    image_utils.save_png(grid_path, grid, scale=2)
    metrics.update(
        kind=kind, checkpoint=path, step=int(path.rsplit("-", 1)[-1]), reconstruction_grid=grid_path
    )
    _write_json(output, metrics)
    shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
    logging.info("%s: %s -> %s", kind, shown, output)
    return metrics
