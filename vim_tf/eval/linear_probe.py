"""What `tools/linear_probe.py` does: a linear probe on a trained prior's frozen features.

The paper's linear probe (Sec. 5.3): feed all image tokens, take the output of one block, average it over
the token axis, train a softmax layer to class logits on those frozen features. The paper's best
block is near the middle of the stack, so every block is probed by default and the best one is
reported (chosen on the test split, as the paper's "best layer" is).

The paper leaves the head's optimizer and feature normalization open. Here (gin: `train_probe.*`):
features are standardized with the train split's per-dimension mean and standard deviation (the
residual stream's scale grows with depth, so one learning rate then fits every block), and a
zero-initialized Dense layer is trained with AdamW (decoupled weight decay on the kernel, not the
bias) on shuffled mini-batches for a fixed number of epochs. The problem is convex, so zero
initialization loses nothing and makes the result depend only on the seed's shuffling order.

The prior never sees a label: an unconditional prior gets its start token; a class-conditional
prior gets only its null class (untrained unless it was trained with
`PriorTraining.class_dropout > 0`; probe an unconditional prior, e.g.
gin/experiments/digits_vim_uncond.gin, for the paper's setup).
"""

import io
import math
import os

import gin
import keras
import numpy as np
import tensorflow as tf
from absl import logging

from vim_tf.config import gin_utils
from vim_tf.data import input_pipeline
from vim_tf.models import loading
from vim_tf.utils import fs
from vim_tf.utils import model_dir as model_dir_lib


def check_layers(layers, num_layers):
    """Validates 1-based block numbers.

    Args:
      layers: None (every block), an int, a comma-separated str ("3,5") or a sequence of ints or
        digit strings.
      num_layers: blocks in the prior.

    Returns:
      Sorted list of distinct ints in [1, num_layers].

    Raises:
      ValueError: a layer is not an integer or out of range (the message names the valid range).
    """
    if layers is None:
        return list(range(1, num_layers + 1))
    if isinstance(layers, str):
        layers = [s for s in layers.split(",") if s.strip()]
    elif isinstance(layers, (int, np.integer)):
        layers = [layers]
    valid = f"block numbers in [1, {num_layers}] (1-based; this prior has {num_layers} blocks)"
    parsed, bad = [], []
    for layer in layers:
        try:
            if isinstance(layer, (bool, float)):
                raise ValueError
            value = int(str(layer).strip())
        except ValueError:
            bad.append(layer)
            continue
        (parsed if 1 <= value <= num_layers else bad).append(value)
    if bad or not parsed:
        raise ValueError(f"layers must be {valid}, got {list(layers)!r} (bad: {bad!r})")
    return sorted(set(parsed))


def probe_class_id(model):
    """The class id fed to the prior (a `loading.TrainedPrior`) for features: never a real label.

    Unconditional priors (num_classes == 0) get 0 (their start token); class-conditional priors
    get their null class.
    """
    network = model.network
    if network.num_classes == 0:
        return 0
    logging.info(
        "class-conditional prior (%d classes): features use only its null class %d, never the "
        "label",
        network.num_classes,
        network.null_class,
    )
    if not model.class_dropout:
        logging.warning(
            "the prior was trained with class_dropout=0, so its null-class embedding is untrained; "
            "probe an unconditional prior (e.g. gin/experiments/digits_vim_uncond.gin) instead"
        )
    return network.null_class


def extract_features(model, split, layers, batch_size=None, dataset_fn=input_pipeline.make_dataset):
    """Token-averaged block outputs of a frozen prior over every image of `split`.

    One forward pass per batch computes every requested block. The prior sees the image tokens
    (`model.tokenize` of the batch without its label) and `probe_class_id(model)`, never the label.

    Args:
      model: a `loading.TrainedPrior` (its network and tokenizer).
      split: split name for `dataset_fn`.
      layers: 1-based block numbers (validated with `check_layers`).
      batch_size: evaluation batch size (None: the gin-bound `make_dataset.batch_size`).
      dataset_fn: `(split=, training=False[, batch_size=]) -> tf.data.Dataset` of
        {"image" or "tokens", "label"} batches; the gin-bound input pipeline by default.

    Returns:
      ({layer: float32 [N, hidden_dim]}, labels int32 [N]).

    Raises:
      ValueError: bad layers, or an empty split.
    """
    layers = check_layers(layers, model.network.num_layers)
    class_id = probe_class_id(model)
    kwargs = {"batch_size": batch_size} if batch_size else {}
    ds = dataset_fn(split=split, training=False, **kwargs)

    @tf.function(reduce_retracing=True)
    def run(inputs):
        tokens = model.tokenize(inputs)
        class_ids = tf.fill(tf.shape(tokens)[:1], tf.constant(class_id, tf.int32))
        _, hidden = model.network(tokens, class_ids, training=False, return_hidden=True)
        return [tf.reduce_mean(tf.cast(hidden[i - 1], tf.float32), axis=1) for i in layers]

    feats = {layer: [] for layer in layers}
    labels = []
    for batch in ds:
        # Only the image (or its tokens) goes in; the label stays out here.
        inputs = {k: v for k, v in batch.items() if k != "label"}
        for layer, f in zip(layers, run(inputs)):
            feats[layer].append(f.numpy())
        labels.append(np.asarray(batch["label"], np.int32))
    if not labels:
        raise ValueError(f"split {split!r} is empty: no features to probe")
    labels = np.concatenate(labels).astype(np.int32)
    return {k: np.concatenate(v).astype(np.float32) for k, v in feats.items()}, labels


def _check_split(name, x, y, num_classes):
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"{name} features must be [N, D] and labels [N] with N > 0, got {x.shape} and {y.shape}"
        )
    bad = y[(y < 0) | (y >= num_classes)]
    if bad.size:
        raise ValueError(
            f"{name} labels must be in [0, {num_classes - 1}] (num_classes={num_classes}), "
            f"got {sorted(set(bad.tolist()))[:10]}"
        )


def _check_probe_args(train, test, num_classes, epochs, batch_size, learning_rate, weight_decay):
    """`train_probe`'s argument checks, with messages naming the bad value."""
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"train_probe.{name} must be a positive int, got {value!r}")
    if weight_decay < 0 or learning_rate <= 0:
        raise ValueError(
            f"train_probe needs learning_rate > 0 and weight_decay >= 0, got {learning_rate} "
            f"and {weight_decay}"
        )
    _check_split("train", *train, num_classes)
    _check_split("test", *test, num_classes)
    if train[0].shape[1] != test[0].shape[1]:
        raise ValueError(f"train/test feature dims differ: {train[0].shape} vs {test[0].shape}")


def _standardize(train_x, test_x):
    """Both splits standardized with the train split's mean and std (constant dimensions are
    only centered); float32."""
    mean = train_x.mean(axis=0, dtype=np.float64)
    std = train_x.std(axis=0, dtype=np.float64)
    std = np.where(std > 1e-6, std, 1.0)
    return ((train_x - mean) / std).astype(np.float32), ((test_x - mean) / std).astype(np.float32)


def _fit_head(head, optimizer, train_x, train_y, batch_size, epochs, seed):
    """`epochs` passes of mini-batch softmax cross-entropy over the shuffled train features."""
    variables = head.trainable_variables
    n = len(train_x)
    batch = min(int(batch_size), n)
    steps = math.ceil(n / batch)
    x, y = tf.constant(train_x), tf.constant(train_y)

    @tf.function
    def run_epoch(order):
        # The whole epoch in one graph: Python overhead per step would dominate a tiny head.
        for i in tf.range(steps):
            idx = order[i * batch : (i + 1) * batch]
            xb, yb = tf.gather(x, idx), tf.gather(y, idx)
            with tf.GradientTape() as tape:
                logits = head(xb)
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits)
                )
            optimizer.apply(tape.gradient(loss, variables), variables)

    rng = np.random.default_rng(seed)
    for _ in range(int(epochs)):
        run_epoch(tf.constant(rng.permutation(n), tf.int32))


@gin.configurable(denylist=["train_x", "train_y", "test_x", "test_y", "num_classes"])
def train_probe(
    train_x,
    train_y,
    test_x,
    test_y,
    num_classes,
    epochs=100,
    batch_size=256,
    learning_rate=1e-3,
    weight_decay=1e-4,
    normalize=True,
    seed=0,
):
    """Trains a softmax layer on frozen features; returns (test top-1, train top-1).

    Args:
      train_x, test_x: float [N, D] features.
      train_y, test_y: int [N] labels in [0, num_classes).
      num_classes: softmax width.
      epochs: passes over the train features.
      batch_size: mini-batch size (capped at the train size).
      learning_rate: Adam(W) learning rate (constant).
      weight_decay: decoupled weight decay on the kernel (0: plain Adam).
      normalize: standardize features with the train split's mean and std (constant dimensions
        are only centered).
      seed: the shuffling order; the same seed and inputs give the same accuracies.

    Returns:
      (test accuracy, train accuracy) as Python floats in [0, 1].
    """
    train_x = np.asarray(train_x, np.float32)
    test_x = np.asarray(test_x, np.float32)
    train_y = np.asarray(train_y).astype(np.int32)
    test_y = np.asarray(test_y).astype(np.int32)
    _check_probe_args(
        (train_x, train_y), (test_x, test_y), num_classes, epochs, batch_size, learning_rate,
        weight_decay,
    )  # fmt: skip
    if normalize:
        train_x, test_x = _standardize(train_x, test_x)

    head = keras.layers.Dense(
        num_classes, kernel_initializer="zeros", bias_initializer="zeros", dtype="float32"
    )
    head.build((None, train_x.shape[1]))
    if weight_decay:
        optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay)
        optimizer.exclude_from_weight_decay(var_list=[head.bias])
    else:
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    optimizer.build(head.trainable_variables)

    _fit_head(head, optimizer, train_x, train_y, batch_size, epochs, seed)

    def accuracy(features, labels):
        preds = np.concatenate(
            [
                np.argmax(head(features[i : i + 8192]).numpy(), axis=-1)
                for i in range(0, len(features), 8192)
            ]
        )
        return float(np.mean(preds == labels))

    return accuracy(test_x, test_y), accuracy(train_x, train_y)


def _num_classes(train_y, test_y):
    """Classes of the gin-bound dataset (`%DATASET`), else the largest label + 1."""
    num_classes = None
    dataset = gin_utils.bound("%DATASET")
    if dataset is not None:
        num_classes = input_pipeline.dataset_info(
            dataset, gin_utils.bound("make_dataset.data_dir")
        )["num_classes"]
    if num_classes is None:
        num_classes = int(max(train_y.max(), test_y.max())) + 1
        logging.info(
            "dataset %r declares no class count; using max label + 1 = %d", dataset, num_classes
        )
    if num_classes < 2:
        raise ValueError(
            f"dataset {dataset!r} has {num_classes} class(es) (unlabelled images get label 0): "
            "a linear probe needs a labelled dataset"
        )
    return int(num_classes)


@gin.configurable(denylist=["model", "layers"])
def probe_prior(model, layers, train_split="train", test_split="test", batch_size=None):
    """Extracts features of both splits once and trains one probe per layer.

    Bound through the prior's own config (gin: `probe_prior.*`); `train_probe.*` sets the head.

    Returns:
      dict: `layers` {str(layer): test top-1}, `train_top1` {str(layer): train top-1},
      `best_layer` (int), `top1` (its test top-1), `num_train`, `num_test`, `num_classes`,
      `feature_dim`, `train_split`, `test_split`.
    """
    layers = check_layers(layers, model.network.num_layers)
    train_feats, train_y = extract_features(model, train_split, layers, batch_size)
    test_feats, test_y = extract_features(model, test_split, layers, batch_size)
    num_classes = _num_classes(train_y, test_y)
    test_top1, train_top1 = {}, {}
    for layer in layers:
        test_acc, train_acc = train_probe(
            train_feats[layer], train_y, test_feats[layer], test_y, num_classes
        )
        test_top1[str(layer)], train_top1[str(layer)] = test_acc, train_acc
        logging.info("block %d: test top-1 %.4f, train top-1 %.4f", layer, test_acc, train_acc)
    # Ties go to the earliest block.
    best = max(layers, key=lambda layer: (test_top1[str(layer)], -layer))
    return {
        "layers": test_top1,
        "train_top1": train_top1,
        "best_layer": int(best),
        "top1": test_top1[str(best)],
        "num_train": int(len(train_y)),
        "num_test": int(len(test_y)),
        "num_classes": num_classes,
        "feature_dim": int(train_feats[layers[0]].shape[1]),
        "train_split": train_split,
        "test_split": test_split,
    }


def plot_accuracy(path, test_top1, train_top1, best_layer, title="Linear probe"):
    """Saves a PNG of top-1 accuracy by block, the best block marked; written atomically.

    Args:
      path: PNG path.
      test_top1, train_top1: {layer (int or str): accuracy in [0, 1]}.
      best_layer: the block to mark.
      title: figure title.
    """
    # The object-oriented API with the Agg canvas: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = sorted(int(k) for k in test_top1)
    test = [100.0 * test_top1[str(k) if str(k) in test_top1 else k] for k in layers]
    train = [100.0 * train_top1[str(k) if str(k) in train_top1 else k] for k in layers]
    best = test[layers.index(int(best_layer))]
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(layers, test, "o-", label="test top-1")
    ax.plot(layers, train, "s--", alpha=0.6, label="train top-1")
    ax.plot([best_layer], [best], "r*", markersize=16, label=f"best: block {best_layer}")
    ax.annotate(
        f"{best:.1f}%", (best_layer, best), textcoords="offset points", xytext=(0, 10), ha="center"
    )
    ax.set_xlabel("block (1-based)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_xticks(layers)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    fs.write_bytes(path, buf.getvalue())


def run_linear_probe(model_dir, output, layers=None):
    """Probes the prior in `model_dir` and writes the JSON to `output` and a plot beside it.

    Args:
      model_dir: a trained prior's model dir (its config.gin sets the dataset and the probe).
      output: JSON path; the plot goes to `<output without extension>.png`.
      layers: blocks to probe (see `check_layers`); None probes every block.

    Returns:
      The dict written to `output` (JSON object keys are strings, so layer keys are "1", "2", ..):
      `layers` {layer: test top-1}, `best_layer`, `top1`, plus `train_top1` {layer: train top-1},
      `num_train`, `num_test`, `num_classes`, `feature_dim`, `train_split`, `test_split`,
      `prior` (the model dir), `checkpoint`, `step`, `plot` (the PNG path).
    """
    model, info, path = loading.load_network(
        model_dir, kinds=("prior",), purpose="linear_probe.py probes a prior (a VIM model dir)"
    )
    # The probe's datasets and settings are those of the prior's own training config.
    gin_utils.load_model_dir_config(model_dir)
    if info.get("kind") != "prior":
        raise ValueError(
            f"{model_dir!r} holds a {info.get('kind')!r} model; linear_probe.py probes a prior"
        )
    layers = check_layers(layers, model.network.num_layers)
    logging.info("probing blocks %s of %s", layers, model_dir)
    result = probe_prior(model, layers)
    plot_path = os.path.splitext(output)[0] + ".png"
    plot_accuracy(
        plot_path,
        result["layers"],
        result["train_top1"],
        result["best_layer"],
        title=f"Linear probe: {os.path.basename(os.path.normpath(model_dir))}",
    )
    result.update(
        prior=fs.abspath(model_dir),
        checkpoint=path,
        step=int(path.rsplit("-", 1)[-1]),
        plot=fs.abspath(plot_path),
    )
    model_dir_lib.write_json(output, result)
    logging.info(
        "linear probe: best block %d, top-1 %.4f -> %s",
        result["best_layer"],
        result["top1"],
        output,
    )
    return result
