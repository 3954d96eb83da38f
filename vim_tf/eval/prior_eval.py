"""Likelihood of a trained prior over a whole split (bits per token)."""

import math

import gin
import tensorflow as tf

from vim_tf.data import input_pipeline


@gin.configurable(denylist=["model"])
def evaluate_prior(model, dataset_fn=input_pipeline.make_dataset, split="test", batch_size=None):
    """Test-split negative log-likelihood of the image tokens given the class (if any).

    Returns:
      dict with `nll_bits_per_token` (mean over every token of the split), `nll_nats_per_token`,
      `token_accuracy` (argmax next-token accuracy), `num_images`, `split`.
    """
    kwargs = {"batch_size": batch_size} if batch_size else {}
    ds = dataset_fn(split=split, training=False, **kwargs)

    @tf.function
    def run(batch):
        tokens = model.tokenize(batch)
        logits = model(tokens, batch["label"], training=False)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tokens, logits=logits)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), tokens), tf.float64)
        return tf.reduce_sum(tf.cast(ce, tf.float64)), tf.reduce_sum(correct), tf.size(tokens)

    nats = correct = 0.0
    tokens = images = 0
    for batch in ds:
        s, c, n = run(batch)
        nats += float(s)
        correct += float(c)
        tokens += int(n)
        images += int(batch["label"].shape[0])
    if tokens == 0:
        raise ValueError(f"split {split!r} is empty: nothing to evaluate")
    return {
        "nll_bits_per_token": nats / tokens / math.log(2.0),
        "nll_nats_per_token": nats / tokens,
        "token_accuracy": correct / tokens,
        "num_images": images,
        "split": split,
    }
