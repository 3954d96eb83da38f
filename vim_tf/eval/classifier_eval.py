"""Accuracy of a classifier over a split, and how often it recognizes samples' classes."""

import gin
import numpy as np
import tensorflow as tf

from vim_tf.data import input_pipeline


@gin.configurable(denylist=["model"])
def evaluate_classifier(
    model, dataset_fn=input_pipeline.make_dataset, split="test", batch_size=None
):
    """Top-1 accuracy over every image of `split`: {"accuracy", "num_images", "split"}."""
    kwargs = {"batch_size": batch_size} if batch_size else {}
    predict = tf.function(lambda x: tf.argmax(model(x, training=False), -1, output_type=tf.int32))
    correct = total = 0
    for batch in dataset_fn(split=split, training=False, **kwargs):
        correct += int(tf.reduce_sum(tf.cast(predict(batch["image"]) == batch["label"], tf.int32)))
        total += int(batch["label"].shape[0])
    return {"accuracy": correct / max(total, 1), "num_images": total, "split": split}


def class_accuracy(model, images, class_ids, batch_size=250):
    """Fraction of `images` the classifier assigns to their conditioning class, overall and per
    class: (float, {class: float})."""
    preds = []
    for start in range(0, len(images), batch_size):
        x = tf.constant(np.asarray(images[start : start + batch_size], np.float32))
        preds.append(tf.argmax(model(x, training=False), -1).numpy())
    preds = np.concatenate(preds)
    class_ids = np.asarray(class_ids)
    per_class = {int(c): float((preds[class_ids == c] == c).mean()) for c in np.unique(class_ids)}
    return float((preds == class_ids).mean()), per_class
