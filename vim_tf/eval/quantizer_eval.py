"""Reconstruction quality and codebook statistics of a trained quantizer over a whole split."""

import gin
import numpy as np
import tensorflow as tf

from vim_tf.data import input_pipeline
from vim_tf.eval import streaming_scores
from vim_tf.models.quantizer import code_statistics
from vim_tf.utils import images as image_utils


@gin.configurable(denylist=["model"])
def evaluate_quantizer(
    model, dataset_fn=input_pipeline.make_dataset, split="test", batch_size=None, network=None
):
    """Encodes and decodes every image of `split` once.

    Returns:
      dict with `psnr` (dB, mean over images), `ssim`, `l1`, `l2` (mean absolute / squared pixel
      error, pixels in [0, 1]), `codebook_usage` (fraction of the codebook used over the whole
      split), `perplexity` (exp entropy of the split's code histogram), `num_images`, `split`,
      `codebook_size`, and `examples`: up to 16 (input, reconstruction) pairs for a grid.
      With a scoring `network` (`vim_tf.eval.scores.ScoringNetwork`) also `rfid`: the Frechet
      distance between its features of the originals and of their reconstructions, and
      `classifier` (the network's name).
    """
    kwargs = {"batch_size": batch_size} if batch_size else {}
    ds = dataset_fn(split=split, training=False, **kwargs)

    @tf.function
    def run(images):
        idx = model.encode(images)
        rec = model.decode(idx)
        counts = tf.math.unsorted_segment_sum(
            tf.ones_like(tf.reshape(idx, [-1]), tf.float32),
            tf.reshape(idx, [-1]),
            model.codebook_size,
        )
        err = rec - images
        return {
            "psnr": image_utils.psnr(images, rec),
            "ssim": image_utils.ssim(images, rec),
            "l1": tf.reduce_mean(tf.abs(err), axis=[1, 2, 3]),
            "l2": tf.reduce_mean(tf.square(err), axis=[1, 2, 3]),
            "counts": counts,
            "reconstruction": rec,
        }

    sums = {"psnr": 0.0, "ssim": 0.0, "l1": 0.0, "l2": 0.0}
    counts = np.zeros([model.codebook_size], np.float64)
    n = 0
    inputs, recs = [], []
    # rFID from running feature moments: memory does not grow with the size of the split.
    real_moments, fake_moments = (
        streaming_scores.FeatureMoments(),
        streaming_scores.FeatureMoments(),
    )
    for batch in ds:
        out = run(batch["image"])
        for k in sums:
            sums[k] += float(tf.reduce_sum(tf.cast(out[k], tf.float64)))
        counts += out["counts"].numpy()
        n += int(batch["image"].shape[0])
        if network is not None:
            real_moments.update(network.activations(batch["image"].numpy())[0])
            fake_moments.update(network.activations(out["reconstruction"].numpy())[0])
        if len(inputs) < 16:
            inputs.extend(batch["image"].numpy()[: 16 - len(inputs)])
            recs.extend(out["reconstruction"].numpy()[: 16 - len(recs)])
    if n == 0:
        raise ValueError(f"split {split!r} is empty: nothing to evaluate")
    usage, perplexity = code_statistics(tf.constant(counts, tf.float32))
    metrics = {k: v / n for k, v in sums.items()}
    metrics.update(
        codebook_usage=float(usage),
        perplexity=float(perplexity),
        num_images=n,
        split=split,
        codebook_size=int(model.codebook_size),
    )
    if network is not None:
        metrics["rfid"] = streaming_scores.frechet_distance_from_moments(real_moments, fake_moments)
        metrics["classifier"] = network.name
    metrics["examples"] = (np.stack(inputs), np.stack(recs))
    return metrics
