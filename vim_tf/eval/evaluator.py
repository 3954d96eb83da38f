"""What `tools/evaluate.py` does: rebuild a trained model from its model dir and score it."""

import os

import numpy as np
import tensorflow as tf
from absl import logging

from vim_tf.config import gin_utils
from vim_tf.eval import classifier_eval, prior_eval, quantizer_eval
from vim_tf.training import trainer
from vim_tf.utils import images as image_utils
from vim_tf.utils import model_dir as model_dir_lib


def load_trained_model(model_dir):
    """Re-parses the model dir's config, builds the model and restores its newest checkpoint.

    Returns:
      (model, model_info dict, checkpoint path).
    """
    info = model_dir_lib.read_model_info(model_dir)
    gin_utils.load_model_dir_config(model_dir)
    kwargs = {"quantizer_dir": info["quantizer_dir"]} if info.get("quantizer_dir") else {}
    model = trainer.create_model(**kwargs)
    model.build_all()
    path = model_dir_lib.restore_latest(model, model_dir)
    logging.info("restored %s (%s)", path, info.get("kind"))
    return model, info, path


def _sample_class_accuracy(prior, classifier_dir, num_samples):
    """Samples `num_samples` per class and scores them with the classifier in `classifier_dir`."""
    from vim_tf.eval import generate

    classifier = load_classifier(classifier_dir)
    plan = np.repeat(np.arange(prior.num_classes, dtype=np.int32), num_samples)
    _, images = generate.Sampler(prior).sample(plan, seed=0, batch_size=500)
    acc, per_class = classifier_eval.class_accuracy(classifier, images, plan)
    return {
        "class_accuracy": acc,
        "class_accuracy_per_class": per_class,
        "num_samples": int(len(plan)),
        "classifier": os.path.abspath(classifier_dir),
    }


def load_classifier(classifier_dir):
    """A trained `ImageClassifier` from its model dir (rebuilt from its Keras config)."""
    from vim_tf.models.classifier import ImageClassifier

    model_dir_lib.read_model_info(classifier_dir, kind="classifier")
    model = ImageClassifier.from_config(model_dir_lib.read_model_config(classifier_dir))
    model.build()
    model_dir_lib.restore_latest(model, classifier_dir)
    return model


def evaluate(model_dir, output, classifier=None, num_samples=100):
    """Scores the model in `model_dir` and writes one JSON object to `output`.

    Args:
      classifier: a classifier model dir; for a class-conditional prior, `num_samples` samples
        per class are drawn and `class_accuracy` is the fraction it assigns to their class.
    """
    model, info, path = load_trained_model(model_dir)
    kind = info.get("kind")
    if kind == "quantizer":
        metrics = quantizer_eval.evaluate_quantizer(model)
        inputs, recs = metrics.pop("examples")
        grid_path = os.path.join(
            os.path.dirname(os.path.abspath(output)), "eval_reconstructions.png"
        )
        grid = image_utils.make_grid(tf.concat([inputs, recs], 0).numpy(), rows=2)
        image_utils.save_png(grid_path, grid, scale=2)
        metrics["reconstruction_grid"] = grid_path
    elif kind == "prior":
        metrics = prior_eval.evaluate_prior(model)
        metrics["quantizer_dir"] = info.get("quantizer_dir")
        if classifier and model.num_classes:
            metrics.update(_sample_class_accuracy(model, classifier, num_samples))
    elif kind == "classifier":
        metrics = classifier_eval.evaluate_classifier(model)
    else:
        raise ValueError(
            f"{model_dir!r} holds a {kind!r} model; evaluate.py scores quantizers, "
            "priors and classifiers"
        )
    metrics.update(kind=kind, checkpoint=path, step=int(path.rsplit("-", 1)[-1]))
    model_dir_lib.write_json(output, metrics)
    shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
    logging.info("%s: %s -> %s", kind, shown, output)
    return metrics
