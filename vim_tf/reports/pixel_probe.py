"""The raw-pixel baseline of the linear probe: logistic regression on the pixels themselves.

The linear probe (`vim_tf.eval.linear_probe`) trains a softmax layer on a prior's frozen
features. Its accuracy means something only beside what the same kind of classifier gets from
the images alone: this module fits scikit-learn's multinomial logistic regression to the raw
pixels of the same train split and scores it on the same test split, at the same image size,
read through the same input pipeline (`make_dataset`, evaluation mode: every image once, center
crops, no augmentation). By default the pixels go in as they are (in [0, 1]) with scikit-learn's
default regularization; `standardize=True` first standardizes each pixel with the train split's
mean and standard deviation, as the probe does with its features. The split names, dataset and image size come from the prior's
config (`probe_prior.train_split` / `test_split`, `make_dataset.*`), from its model dir or from
the gin files it was trained with.
"""

import time

import numpy as np
from absl import logging

from vim_tf.config import gin_utils
from vim_tf.data import input_pipeline
from vim_tf.utils import fs

DEFAULT_GIN_FILE = "experiments/digits_vim_uncond.gin"


def load_pixels(split, dataset_fn=input_pipeline.make_dataset, batch_size=None):
    """Every image of `split`, flattened.

    Args:
      split: split name for `dataset_fn`.
      dataset_fn: `(split=, training=False[, batch_size=])` -> batches of {"image", "label"};
        the gin-bound input pipeline by default.
      batch_size: evaluation batch size (None: the gin-bound one).

    Returns:
      (pixels float32 [N, H * W * 3] in [0, 1], labels int32 [N]).

    Raises:
      ValueError: the split is empty.
    """
    kwargs = {"batch_size": batch_size} if batch_size else {}
    images, labels = [], []
    for batch in dataset_fn(split=split, training=False, **kwargs):
        x = np.asarray(batch["image"], np.float32)
        images.append(x.reshape(len(x), -1))
        labels.append(np.asarray(batch["label"], np.int32))
    if not labels:
        raise ValueError(f"split {split!r} is empty: no pixels to fit")
    return np.concatenate(images), np.concatenate(labels)


def fit_pixels(train, test, standardize=False, c=1.0, max_iter=2000):
    """Multinomial logistic regression on pixels; returns (test top-1, train top-1).

    Args:
      train, test: (pixels float [N, D], labels int [N]) each.
      standardize: standardize each pixel with the train split's mean and std first (constant
        pixels, e.g. a blank border, are only centered).
      c: inverse l2 regularization strength (scikit-learn's `C`).
      max_iter: solver iterations (lbfgs).
    """
    from sklearn.linear_model import LogisticRegression

    (train_x, train_y), (test_x, test_y) = train, test
    if len(set(np.asarray(train_y).tolist())) < 2:
        raise ValueError(
            f"the train split has {len(set(np.asarray(train_y).tolist()))} class(es): a "
            "classifier needs a labelled dataset with at least 2"
        )
    mean, std = np.zeros(train_x.shape[1]), np.ones(train_x.shape[1])
    if standardize:
        mean = train_x.mean(axis=0, dtype=np.float64)
        std = train_x.std(axis=0, dtype=np.float64)
        std = np.where(std > 1e-6, std, 1.0)
    model = LogisticRegression(C=c, max_iter=max_iter)
    model.fit((train_x - mean) / std, train_y)
    test_acc = float(model.score((test_x - mean) / std, test_y))
    train_acc = float(model.score((train_x - mean) / std, train_y))
    return test_acc, train_acc


def _bound(parameter, default):
    value = gin_utils.bound(parameter)
    return default if value is None else value


def run_pixel_probe(
    output=None, model_dir=None, gin_files=(DEFAULT_GIN_FILE,), gin_bindings=(), standardize=False
):
    """Fits the raw-pixel baseline on the linear probe's splits and writes the result as JSON.

    Args:
      output: JSON path (None: not written).
      model_dir: a trained prior's model dir: its saved config names the dataset and splits
        (`gin_files` and `gin_bindings` are then extra bindings only).
      gin_files, gin_bindings: without `model_dir`, the prior's experiment (default: the one
        the main job's linear probe uses).
      standardize: see `fit_pixels`.

    Returns:
      {"top1": test accuracy, "train_top1", "dataset", "image_size", "train_split",
      "test_split", "num_train", "num_test", "feature_dim", "classifier", "seconds"}.
    """
    import gin

    gin.clear_config()
    if model_dir:
        gin_utils.load_model_dir_config(model_dir, gin_bindings)
    else:
        gin_utils.parse(gin_files, gin_bindings)
    train_split = _bound("probe_prior.train_split", "train")
    test_split = _bound("probe_prior.test_split", "test")
    start = time.time()
    train, test = load_pixels(train_split), load_pixels(test_split)
    test_acc, train_acc = fit_pixels(train, test, standardize)
    result = dict(
        top1=test_acc,
        train_top1=train_acc,
        dataset=gin_utils.bound("make_dataset.dataset"),
        image_size=gin_utils.bound("make_dataset.image_size"),
        train_split=train_split,
        test_split=test_split,
        num_train=int(len(train[1])),
        num_test=int(len(test[1])),
        feature_dim=int(train[0].shape[1]),
        classifier="sklearn LogisticRegression(C=1, lbfgs) on "
        + ("train-standardized pixels" if standardize else "pixels in [0, 1]"),
        seconds=time.time() - start,
    )
    if model_dir:
        result["prior"] = fs.abspath(model_dir)
    gin.clear_config()
    if output:
        fs.write_json(output, result)
    logging.info("raw-pixel logistic regression: test top-1 %.4f (%s)", test_acc, result)
    return result
