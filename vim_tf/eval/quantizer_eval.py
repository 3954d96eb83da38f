"""Reconstruction quality and codebook statistics of a trained quantizer over a whole split."""

import gin
import numpy as np
import tensorflow as tf

from vim_tf.data import input_pipeline
from vim_tf.eval import streaming_scores
from vim_tf.models.quantizer import code_counts, code_statistics
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
        counts = code_counts(idx, model.codebook_size)
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


def mean_pairwise_cosine(vectors):
    """Mean cosine similarity over all unordered pairs of distinct rows of `vectors` [N, d]
    (N >= 2); float64. Uses sum_{i != j} u_i.u_j = ||sum_i u_i||^2 - N for unit rows u_i, so
    memory is N*d, not N*N."""
    v = np.asarray(vectors, np.float64).reshape(-1, np.shape(vectors)[-1])
    n = v.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 vectors for a pairwise cosine, got {n}")
    u = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    total = np.sum(u, axis=0)
    return float((total @ total - n) / (n * (n - 1)))


def lookup_geometry(
    model, dataset_fn=input_pipeline.make_dataset, split="test", max_tokens=4096, batch_size=None
):
    """Where a tokenizer's lookup vectors lie: how many codes the split's tokens reach and how
    spread out their lookup vectors are. Meant for a freshly initialized tokenizer: an encoder
    whose lookup vectors all point one way reaches few codes from the start, which tells a
    codebook that starts collapsed from one that collapses in training.

    Returns:
      dict with `codebook_usage` and `perplexity` of the split's codes (as `evaluate_quantizer`
      counts them), `lookup_cosine`: the mean pairwise cosine similarity of the lookup vectors of
      the split's first `max_tokens` tokens (about 0 for directions spread over the sphere, 1 when
      all point the same way), `num_tokens` it was taken over and `num_images`.
    """
    kwargs = {"batch_size": batch_size} if batch_size else {}
    ds = dataset_fn(split=split, training=False, **kwargs)

    @tf.function
    def run(images):
        z, idx = model.codebook.lookup(model.encoder(images, training=False))
        counts = code_counts(idx, model.codebook_size)
        return tf.reshape(z, [-1, tf.shape(z)[-1]]), counts

    counts = np.zeros([model.codebook_size], np.float64)
    sample, taken, n = [], 0, 0
    for batch in ds:
        z, c = run(batch["image"])
        counts += c.numpy()
        n += int(batch["image"].shape[0])
        if taken < max_tokens:
            sample.append(z.numpy()[: max_tokens - taken])
            taken += len(sample[-1])
    if n == 0:
        raise ValueError(f"split {split!r} is empty: nothing to measure")
    usage, perplexity = code_statistics(tf.constant(counts, tf.float32))
    return dict(
        codebook_usage=float(usage),
        perplexity=float(perplexity),
        lookup_cosine=mean_pairwise_cosine(np.concatenate(sample)),
        num_tokens=taken,
        num_images=n,
    )
