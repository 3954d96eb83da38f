"""Likelihood of a trained prior over a whole split (bits per token)."""

import math

import gin
import numpy as np
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


def real_activations(network, split, dataset_fn=input_pipeline.make_dataset):
    """Scoring-network features of every image of `split`, streamed batch by batch."""
    feats = [
        network.activations(b["image"].numpy())[0]
        for b in dataset_fn(split=split, training=False, cache=False)
    ]
    return np.concatenate(feats)


SAMPLING_KEYS = ("temperature", "top_k", "top_p", "cfg_scale")


def split_sampling(sampling):
    """{temperature, top_k, top_p, cfg_scale, seed} (any subset, or None) -> the `seed` and
    `sampling_kwargs` arguments of `score_prior_samples`."""
    sampling = dict(sampling or {})
    unknown = sorted(set(sampling) - set(SAMPLING_KEYS) - {"seed"})
    if unknown:
        raise ValueError(
            f"unknown sampling settings {unknown}; valid: {list(SAMPLING_KEYS) + ['seed']}"
        )
    out = {"sampling_kwargs": {k: sampling[k] for k in SAMPLING_KEYS if k in sampling}}
    if "seed" in sampling:
        out["seed"] = int(sampling["seed"])
    return out


@gin.configurable(
    denylist=["model", "network", "num_samples", "acceptance_rate", "seed", "sampler"]
)
def score_prior_samples(
    model,
    network,
    num_samples,
    acceptance_rate=1.0,
    seed=0,
    real_split="test",
    floor_split=None,
    sampling_kwargs=None,
    sampler=None,
):
    """FID / classifier score / KID of `num_samples` samples against the real `real_split`.

    Class-conditional priors sample every class evenly and also get `class_accuracy`; with
    `acceptance_rate` < 1 the samples come from classifier rejection sampling. With
    `floor_split`, `fid_floor` is the FID between the real `floor_split` and `real_split` images
    (the best a generator can expect at this sample size and network). `sampler` defaults to
    `generate.Sampler(model)` (a served model passes its own). `sampling_kwargs`: temperature,
    top_k, top_p, cfg_scale (default: temperature 1, no top-k, top-p or guidance, as in the
    paper); they and the seed are recorded in the result under `sampling`.
    """
    from vim_tf.eval import generate, rejection, scores
    from vim_tf.models import sampling

    settings = dict(temperature=1.0, top_k=0, top_p=1.0, cfg_scale=1.0)
    unknown = sorted(set(sampling_kwargs or {}) - set(settings))
    if unknown:
        raise ValueError(f"unknown sampling settings {unknown}; valid: {sorted(settings)}")
    settings.update(sampling_kwargs or {})
    sampling.check_sampling_args(**settings)

    plan = generate.class_plan(num_samples, model.num_classes)
    ids = plan if plan is not None else np.zeros([num_samples], np.int32)
    _, images, achieved = rejection.rejection_sample(
        sampler or generate.Sampler(model),
        network,
        ids,
        acceptance_rate,
        seed=seed,
        **settings,
    )
    fake_features, fake_logits = network.activations(images)
    real = real_activations(network, real_split)
    kid, kid_std = scores.kernel_distance(real, fake_features)
    out = {
        "fid": scores.frechet_distance(real, fake_features),
        "inception_score": scores.inception_score(fake_logits),
        "kid": kid,
        "acceptance_rate": achieved,
        "num_samples": int(len(images)),
        "num_real": int(len(real)),
        "real_split": real_split,
        "classifier": network.name,
        "sampling": {**settings, "seed": int(seed)},
    }
    if plan is not None:
        out["class_accuracy"] = scores.class_accuracy(fake_logits, plan)
        predicted = np.argmax(fake_logits, axis=1)
        out["class_accuracy_per_class"] = {
            str(c): float(np.mean(predicted[plan == c] == c)) for c in np.unique(plan)
        }
    if floor_split:
        out["fid_floor"] = scores.frechet_distance(real_activations(network, floor_split), real)
        out["fid_floor_splits"] = f"{floor_split} vs {real_split}"
    return out
