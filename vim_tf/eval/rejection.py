"""Classifier rejection sampling (PAPER.md): draw more candidates than needed, keep per class the
ones the classifier scores most probable for their conditioning class."""

import math

import numpy as np
from absl import logging


def class_probabilities(network, images, class_ids, batch_size=250):
    """p(class_ids[i] | images[i]) under the scoring network's softmax: float64 [N]."""
    _, logits = network.activations(images, batch_size)
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs[np.arange(len(class_ids)), np.asarray(class_ids)]


def rejection_sample(sampler, network, plan, acceptance_rate, seed=0, batch_size=100, **kw):
    """Samples `plan` (class id per wanted sample) keeping the best `acceptance_rate` fraction.

    For each class with n wanted samples, ceil(n / acceptance_rate) candidates are drawn and the n
    with the highest classifier probability of that class are kept.

    Args:
      sampler: a `vim_tf.eval.generate.Sampler`.
      network: a `vim_tf.eval.scores.ScoringNetwork`.
      plan: int [N] class ids, grouped by class.
      acceptance_rate: in (0, 1]; 1 keeps every draw.
      **kw: sampling settings (temperature, top_k, top_p, cfg_scale).

    Returns:
      (tokens [N, h, w], images [N, H, W, 3], achieved acceptance rate = kept / drawn).
    """
    if not 0.0 < acceptance_rate <= 1.0:
        raise ValueError(f"acceptance_rate must be in (0, 1], got {acceptance_rate}")
    plan = np.asarray(plan, np.int32)
    if acceptance_rate == 1.0:
        tokens, images = sampler.sample(plan, seed=seed, batch_size=batch_size, **kw)
        return tokens, images, 1.0
    classes, wanted = np.unique(plan, return_counts=True)
    candidates = np.concatenate(
        [np.full(math.ceil(n / acceptance_rate), c, np.int32) for c, n in zip(classes, wanted)]
    )
    tokens, images = sampler.sample(candidates, seed=seed, batch_size=batch_size, **kw)
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
