"""Likelihood of a trained prior over a whole split (bits per token)."""

import dataclasses
import math

import gin
import tensorflow as tf
from absl import logging

from vim_tf.data import input_pipeline
from vim_tf.eval import scores, streaming_scores
from vim_tf.sampling import rejection
from vim_tf.sampling import sampler as sampler_lib
from vim_tf.sampling.settings import SamplingSettings


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
        logits = model.network(tokens, batch["label"], training=False)
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


def real_summary(
    network,
    split,
    dataset_fn=input_pipeline.make_dataset,
    kid_max_samples=streaming_scores.DEFAULT_KID_MAX_SAMPLES,
):
    """`streaming_scores.ActivationSummary` of the scoring network's features of every image of
    `split`, streamed batch by batch (no image or feature array kept beyond the KID subset)."""
    batches = (b["image"].numpy() for b in dataset_fn(split=split, training=False, cache=False))
    return streaming_scores.ActivationSummary.of_batches(
        network, batches, kid_max_samples=kid_max_samples
    )


class RealSummaries:
    """`real_summary` of each (split, kid_max_samples) computed once and kept, for scoring
    several sample sets of one network against the same real images.

    Args:
      network: the `ScoringNetwork` whose features the summaries hold.
    """

    def __init__(self, network):
        self.network = network
        self._summaries = {}

    def get(self, split, dataset_fn=input_pipeline.make_dataset, kid_max_samples=None):
        key = (split, dataset_fn, kid_max_samples)
        if key not in self._summaries:
            self._summaries[key] = real_summary(self.network, split, dataset_fn, kid_max_samples)
        return self._summaries[key]


@gin.configurable(
    denylist=["sampler", "network", "num_samples", "acceptance_rate", "seed", "settings", "reals"]
)
def score_prior_samples(
    sampler,
    network,
    num_samples,
    acceptance_rate=1.0,
    seed=0,
    settings=None,
    real_split="test",
    floor_split=None,
    kid_max_samples=streaming_scores.DEFAULT_KID_MAX_SAMPLES,
    dataset_fn=input_pipeline.make_dataset,
    reals=None,
    sharded=None,
    batch_size=100,
):
    """FID / classifier score / KID of `num_samples` samples against the real `real_split`.

    Class-conditional priors sample every class evenly and also get `class_accuracy` (when
    the network has as many classes as the prior, so that class ids correspond); with
    `acceptance_rate` < 1 the samples come from classifier rejection sampling. With
    `floor_split`, `fid_floor` is the FID between the real `floor_split` and `real_split` images
    (the best a generator can expect at this sample size and network). The settings
    (`SamplingSettings`, default: the paper's) and the seed are recorded under `sampling`.

    Scoring streams: each batch of samples goes through `network` and is dropped, and only
    running sums (FID, classifier score, class counts) and a random subset of at most
    `kid_max_samples` features per image set (KID) are kept, so memory does not grow with
    `num_samples` (see `vim_tf.eval.streaming_scores`).

    Args:
      sampler: a `vim_tf.sampling.sampler.BatchSampler` (its `num_classes` sets the plan): a
        `Sampler` of a prior network, or a served export's.
      network: the `ScoringNetwork`.
      dataset_fn: gives the real splits.
      reals: a `RealSummaries` of `network` to take the real splits' statistics from (and
        keep them in); default: computed for this call only.
      sharded: a `Sharded`: write each shard of samples' activations (features, logits, class
        ids; no image) to its dir as it is scored (see `score_sample_shards`): resumable, and
        shared by workers; the workers other than the chief return None after their shards.
        None: keep only the running sums in memory.
      batch_size: samples per batch (the samples depend on it, as in `BatchSampler.sample`).

    Returns:
      The metrics dict (None on a worker other than the chief).
    """
    settings = SamplingSettings() if settings is None else settings
    num_classes = sampler.num_classes
    plan = sampler_lib.class_plan(num_samples, num_classes)
    run = (plan, num_samples, acceptance_rate, seed, settings, kid_max_samples, batch_size)
    fake, achieved = _fake_summary(sampler, network, sharded, *run)
    if fake is None:
        return None
    reals = RealSummaries(network) if reals is None else reals
    if reals.network is not network:
        raise ValueError("reals holds the statistics of another scoring network")
    real = reals.get(real_split, dataset_fn, kid_max_samples)
    kid, _ = scores.kernel_distance(*streaming_scores.kid_features(real, fake))
    out = {
        "fid": streaming_scores.frechet_distance(real, fake),
        "inception_score": fake.inception_score(),
        "kid": kid,
        "acceptance_rate": achieved,
        "num_samples": int(fake.count),
        "num_real": int(real.count),
        "real_split": real_split,
        "classifier": network.name,
        "sampling": {**settings.as_dict(), "seed": int(seed)},
    }
    if plan is not None:
        out.update(_class_accuracy(fake, network, num_classes))
    if floor_split:
        floor = reals.get(floor_split, dataset_fn)
        out["fid_floor"] = streaming_scores.frechet_distance(floor, real)
        out["fid_floor_splits"] = f"{floor_split} vs {real_split}"
    return out


@dataclasses.dataclass(frozen=True)
class Sharded:
    """Where and as whom `score_prior_samples` writes its activation shards.

    Attributes:
      shard_dir: the dir of the shards and their manifest.
      worker: (index, count) of this worker; the chief (0) waits for all shards and scores.
      identity: JSON-able facts naming the prior (model dir, checkpoint): a rerun for another
        prior into the same dir is refused.
    """

    shard_dir: str
    worker: tuple = (0, 1)
    identity: dict = dataclasses.field(default_factory=dict)


def _fake_summary(
    sampler,
    network,
    sharded,
    plan,
    num_samples,
    acceptance_rate,
    seed,
    settings,
    kid_max_samples,
    batch_size,
):
    """(ActivationSummary of the samples, achieved acceptance rate): through shards when
    `sharded` ((None, None) on a worker other than the chief), else in memory."""
    if sharded is None:
        return _sample_summary(
            sampler,
            network,
            plan,
            num_samples,
            acceptance_rate,
            seed,
            settings,
            kid_max_samples,
            batch_size,
        )
    if acceptance_rate != 1.0:
        raise ValueError(
            "sharded scoring draws every sample once; classifier rejection sampling "
            "(acceptance_rate < 1) ranks all candidates of a class together: score it "
            "without shards"
        )
    fake = score_sample_shards(
        sampler,
        network,
        plan,
        num_samples,
        seed,
        settings,
        batch_size,
        sharded.shard_dir,
        sharded.worker,
        kid_max_samples,
        sharded.identity,
    )
    return fake, 1.0 if fake is not None else None


ACTIVATION_BATCHES_PER_SHARD = 10


def score_sample_shards(
    sampler,
    network,
    plan,
    num_samples,
    seed,
    settings,
    batch_size,
    shard_dir,
    worker=(0, 1),
    kid_max_samples=streaming_scores.DEFAULT_KID_MAX_SAMPLES,
    identity=None,
):
    """Samples the plan shard by shard (`ACTIVATION_BATCHES_PER_SHARD` batches each), runs each
    batch through `network` and writes the shard's features, logits and class ids to
    `shard_dir/activations-NNNNN-of-MMMMM.npz` (a `vim_tf.utils.shards.ShardSet`); images are
    dropped once scored. A rerun skips the finished shards. The chief then streams every shard,
    in order, into an `ActivationSummary` (one shard in memory at a time).

    `identity`: JSON-able facts naming the prior (model dir, checkpoint): a rerun for another
    prior into the same dir is refused.

    Returns:
      The summary on the chief (worker 0), None on the other workers.
    """
    from vim_tf.eval import generate
    from vim_tf.utils import fs, shards

    ids = sampler_lib.plan_ids(plan, num_samples)
    params = {
        "classifier": network.name,
        "seed": int(seed),
        "batch_size": int(batch_size),
        "sampling": settings.as_dict(),
        **(identity or {}),
    }
    shard_set = shards.ShardSet(
        shard_dir,
        "activations",
        ".npz",
        num_samples,
        ACTIVATION_BATCHES_PER_SHARD * batch_size,
        params,
        *worker,
    )
    shard_set.open(write_manifest=worker[0] == 0)
    if settings.guided:
        sampler.check_guidance(settings.cfg_scale)
    for index in shard_set.pending():
        # The decoder's float images, as the in-memory path scores them.
        samples = generate.sample_shard(
            sampler, ids, plan, shard_set.bounds(index), seed, settings, batch_size, uint8=False
        )
        features, logits = network.activations(samples.pop("images"), 250)
        arrays = {"features": features, "logits": logits}
        if plan is not None:
            arrays["class_ids"] = samples["class_ids"]
        shard_set.write(index, lambda tmp, arrays=arrays: fs.save_npz(tmp, **arrays))
    if worker[0] != 0:
        return None
    shard_set.wait_for_all()
    fake = streaming_scores.ActivationSummary(kid_max_samples, total=num_samples, seed=seed)
    for path in shard_set.paths():
        arrays = fs.load_npz(path)
        fake.update(arrays["features"], arrays["logits"], arrays.get("class_ids"))
    shard_set.finish()
    return fake


def _sample_summary(
    sampler,
    network,
    plan,
    num_samples,
    acceptance_rate,
    seed,
    settings,
    kid_max_samples,
    batch_size=100,
):
    """Samples the plan (through rejection sampling when acceptance_rate < 1) and streams them
    into an `ActivationSummary`. Returns (summary, achieved acceptance rate)."""
    ids = sampler_lib.plan_ids(plan, num_samples)
    fake = streaming_scores.ActivationSummary(kid_max_samples, total=len(ids), seed=seed)
    with_ids = plan is not None
    if acceptance_rate == 1.0:
        # One batch of images at a time: sampled, scored, dropped.
        batches = sampler.sample_batches(ids, seed=seed, settings=settings, batch_size=batch_size)
        for batch_ids, _, images in batches:
            fake.add_images(network, images, batch_ids if with_ids else None)
            del images
        return fake, 1.0
    kept = rejection.stream_rejection_sample(
        sampler,
        network,
        ids,
        acceptance_rate,
        seed=seed,
        settings=settings,
        batch_size=batch_size,
    )
    for features, logits, kept_ids in kept:
        fake.update(features, logits, kept_ids if with_ids else None)
    achieved = len(ids) / len(rejection.candidate_plan(ids, acceptance_rate)[2])
    logging.info("rejection sampling kept %d samples (acceptance %.3f)", len(ids), achieved)
    return fake, achieved


def _class_accuracy(fake, network, num_classes):
    """{class_accuracy, class_accuracy_per_class} of class-conditional samples, or {} when the
    network's classes are not the prior's."""
    if fake.score_sums.num_classes != num_classes:
        # E.g. the 1008-way Inception graph on a 1000-class prior: class ids do not correspond.
        logging.warning(
            "class_accuracy not reported: %s has %d classes, the prior %d",
            network.name,
            fake.score_sums.num_classes,
            num_classes,
        )
        return {}
    return {
        "class_accuracy": fake.class_accuracy(),
        "class_accuracy_per_class": fake.class_accuracy_per_class(),
    }
