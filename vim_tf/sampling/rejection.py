"""Classifier rejection sampling (as in the paper's class-conditional results): draw more
candidates than needed, keep per class the ones the classifier scores most probable for their
conditioning class.

The sampler is a `vim_tf.sampling.sampler.BatchSampler` (or anything with its `sample` /
`sample_batches`); the scoring network has `activations(images, batch_size) -> (features,
logits)` (a `vim_tf.eval.scores.ScoringNetwork`).
"""

import math

import numpy as np
from absl import logging


def class_probabilities(network, images, class_ids, batch_size=250):
    """p(class_ids[i] | images[i]) under the scoring network's softmax: float64 [N]."""
    _, logits = network.activations(images, batch_size)
    return _softmax(logits)[np.arange(len(class_ids)), np.asarray(class_ids)]


def rejection_sample(
    sampler, network, plan, acceptance_rate, seed=0, batch_size=100, settings=None
):
    """Samples `plan` (class id per wanted sample) keeping the best `acceptance_rate` fraction.

    For each class with n wanted samples, ceil(n / acceptance_rate) candidates are drawn and the n
    with the highest classifier probability of that class are kept.

    Args:
      sampler: a `vim_tf.sampling.sampler.BatchSampler`.
      network: a `vim_tf.eval.scores.ScoringNetwork`.
      plan: int [N] class ids, grouped by class.
      acceptance_rate: in (0, 1]; 1 keeps every draw.
      seed, batch_size, settings: as in `BatchSampler.sample`.

    Returns:
      (tokens [N, h, w], images [N, H, W, 3], achieved acceptance rate = kept / drawn).
    """
    plan = np.asarray(plan, np.int32)
    classes, wanted, candidates = candidate_plan(plan, acceptance_rate)
    if acceptance_rate == 1.0:
        tokens, images = sampler.sample(plan, seed=seed, settings=settings, batch_size=batch_size)
        return tokens, images, 1.0
    tokens, images = sampler.sample(candidates, seed=seed, settings=settings, batch_size=batch_size)
    probs = class_probabilities(network, images, candidates)
    keep = []
    for c, n in zip(classes, wanted):
        idx = np.where(candidates == c)[0]
        keep.extend(idx[np.argsort(-probs[idx], kind="stable")[:n]])
    keep = np.asarray(keep)
    achieved = len(keep) / len(candidates)
    logging.info(
        "rejection sampling kept %d of %d candidates (acceptance %.3f)",
        len(keep),
        len(candidates),
        achieved,
    )
    return tokens[keep], images[keep], achieved


def candidate_plan(plan, acceptance_rate):
    """(classes, wanted per class, candidate class ids grouped by class): for n wanted samples
    of a class, ceil(n / acceptance_rate) candidates."""
    if not 0.0 < acceptance_rate <= 1.0:
        raise ValueError(f"acceptance_rate must be in (0, 1], got {acceptance_rate}")
    classes, wanted = np.unique(np.asarray(plan, np.int32), return_counts=True)
    candidates = np.concatenate(
        [np.full(math.ceil(n / acceptance_rate), c, np.int32) for c, n in zip(classes, wanted)]
    )
    return classes, wanted, candidates


def stream_rejection_sample(
    sampler,
    network,
    plan,
    acceptance_rate,
    seed=0,
    batch_size=100,
    network_batch_size=250,
    settings=None,
):
    """`rejection_sample` that scores the candidates as they are drawn and keeps no image.

    The candidates are drawn in the batches (and with the seeds) of `rejection_sample`, each
    batch goes through `network` once and is dropped; the features and logits of the current
    class's candidates are held until the class is complete (candidates are grouped by class),
    then the best ones are yielded.

    Args:
      sampler: has `sample_batches(class_ids, seed=, settings=, batch_size=)` yielding
        (class_ids, tokens, images) per batch (a `vim_tf.sampling.sampler.BatchSampler`).
      network: a `vim_tf.eval.scores.ScoringNetwork`.
      plan, acceptance_rate, seed, batch_size, settings: as in `rejection_sample`.
      network_batch_size: images per forward pass of `network`.

    Yields:
      (features [n, F], logits [n, C] float64, class_ids int32 [n]) of the kept samples, one
      class at a time; in all, one per entry of `plan`. The achieved acceptance rate is
      len(plan) / len(candidate_plan(plan, acceptance_rate)[2]).
    """
    classes, wanted, candidates = candidate_plan(plan, acceptance_rate)
    want = dict(zip(classes.tolist(), wanted.tolist()))
    held_class, held = None, []

    def flush():
        features = np.concatenate([f for f, _ in held])
        logits = np.concatenate([lg for _, lg in held])
        probs = _softmax(logits)[:, held_class]
        keep = np.argsort(-probs, kind="stable")[: want[held_class]]
        return features[keep], logits[keep], np.full(len(keep), held_class, np.int32)

    batches = sampler.sample_batches(
        candidates, seed=seed, settings=settings, batch_size=batch_size
    )
    for ids, _, images in batches:
        features, logits = network.activations(images, network_batch_size)
        del images
        for c in np.unique(ids):  # ids are sorted: candidates are grouped by class
            rows = ids == c
            if held_class is not None and c != held_class:
                yield flush()
                held = []
            held_class = int(c)
            held.append((features[rows], logits[rows]))
    if held:
        yield flush()


def _softmax(logits):
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)
