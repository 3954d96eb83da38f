"""What `tools/evaluate.py` does: load a trained network from its model dir and score it."""

import contextlib

import tensorflow as tf
from absl import logging

from vim_tf.config import gin_utils
from vim_tf.eval import classifier_eval, networks, prior_eval, quantizer_eval, saved_model_eval
from vim_tf.models import loading
from vim_tf.sampling.sampler import Sampler
from vim_tf.sampling.settings import split_seed
from vim_tf.utils import fs, replicas
from vim_tf.utils import images as image_utils
from vim_tf.utils import model_dir as model_dir_lib


def evaluate_export(
    saved_model, output, classifier=None, num_samples=1000, acceptance_rate=1.0, sampling=None
):
    """Scores an exported SavedModel version dir (see `saved_model_eval`) into `output`.

    Args:
      sampling: as in `evaluate`.
    """
    network = networks.load_scoring_network(classifier) if classifier else None
    settings, seed = split_seed(sampling)
    metrics = saved_model_eval.evaluate_saved_model(
        saved_model, network, num_samples, acceptance_rate, settings, seed
    )
    model_dir_lib.write_json(output, metrics)
    logging.info("%s export: %s -> %s", metrics["kind"], metrics, output)
    return metrics


def evaluate(
    model_dir,
    output,
    classifier=None,
    num_samples=1000,
    acceptance_rate=1.0,
    floor_split=None,
    checkpoint=None,
    sampling=None,
    strategy=None,
    shard_dir=None,
):
    """Scores the model in `model_dir` and writes one JSON object to `output`.

    Args:
      classifier: the scoring network (see `networks.load_scoring_network`): adds `rfid` for a
        quantizer; for a prior, `num_samples` samples (every class evenly) get `fid`,
        `inception_score` (the network's classifier score), `kid` and `class_accuracy`.
      acceptance_rate: classifier rejection sampling for the prior's samples (1 = off).
      floor_split: also report `fid_floor`, the FID of this real split against the test split.
      checkpoint: a specific checkpoint path (default: the newest).
      sampling: the prior's sampling settings, a dict of temperature, top_k, top_p, cfg_scale
        and seed (default: the paper's, temperature 1 without top-k, top-p or guidance; seed 0).
      strategy: a `tf.distribute.Strategy` whose local replicas share every batch of a prior's
        samples; under MultiWorkerMirroredStrategy the workers share the sample shards (needs
        `shard_dir`) and only the chief scores and writes `output`. Quantizers and classifiers
        are scored on the chief's default device.
      shard_dir: score a prior's samples shard by shard, writing each shard's activations
        there (resumable; see `prior_eval.score_sample_shards`). None: in memory only.

    Returns:
      The metrics (None on a worker other than the chief).
    """
    worker, workers = replicas.worker_share(strategy)
    if workers > 1 and shard_dir is None:
        raise ValueError("a multi-worker evaluation shares its sample shards: it needs shard_dir")
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model, info, path = loading.load_network(
            model_dir,
            purpose="evaluate.py scores quantizers, priors and classifiers",
            checkpoint=checkpoint,
        )
    # The datasets the scores read are those of the model's own training config.
    gin_utils.load_model_dir_config(model_dir)
    kind = info.get("kind")
    network = networks.load_scoring_network(classifier) if classifier else None
    settings, seed = split_seed(sampling)
    if kind != "prior" and worker != 0:
        logging.info("worker %d: a %s is scored by the chief alone", worker, kind)
        return None
    if kind == "quantizer":
        metrics = _evaluate_quantizer(model, network, output)
    elif kind == "prior":
        identity = {"model_dir": fs.abspath(model_dir), "checkpoint": fs.basename(path)}
        metrics = _evaluate_prior(
            model,
            network,
            num_samples,
            acceptance_rate,
            floor_split,
            settings,
            seed,
            strategy=strategy,
            shard_dir=shard_dir,
            identity=identity,
        )
        if metrics is None:
            return None
        metrics["quantizer_dir"] = info.get("quantizer_dir")
    elif kind == "classifier":
        metrics = classifier_eval.evaluate_classifier(model)
    else:
        raise ValueError(
            f"{model_dir!r} holds a {kind!r} model; evaluate.py scores quantizers, "
            "priors and classifiers"
        )
    metrics.update(kind=kind, checkpoint=path, step=int(path.rsplit("-", 1)[-1]))
    model_dir_lib.write_json(output, metrics)
    logging.info("%s: %s -> %s", kind, _shown(metrics), output)
    return metrics


def _evaluate_quantizer(model, network, output):
    """A quantizer's metrics; its reconstruction grid goes beside `output`."""
    metrics = quantizer_eval.evaluate_quantizer(model, network=network)
    inputs, recs = metrics.pop("examples")
    grid_path = fs.join(fs.dirname(output), "eval_reconstructions.png")
    grid = image_utils.make_grid(tf.concat([inputs, recs], 0).numpy(), rows=2)
    image_utils.save_png(grid_path, grid, scale=2)
    metrics["reconstruction_grid"] = grid_path
    return metrics


def _evaluate_prior(
    model,
    network,
    num_samples,
    acceptance_rate,
    floor_split,
    settings,
    seed,
    strategy=None,
    shard_dir=None,
    identity=None,
):
    """The test-split NLL of a prior and, with a scoring network, the scores of its samples
    (None on a worker other than the chief: it only samples and scores its shards)."""
    worker = replicas.worker_share(strategy)
    if worker[0] != 0 and network is None:
        return None
    scored = {}
    if network is not None:
        sampler = Sampler.of_trained_prior(model, strategy=strategy)
        scored = prior_eval.score_prior_samples(
            sampler,
            network,
            num_samples,
            acceptance_rate,
            seed,
            settings,
            floor_split=floor_split,
            sharded=prior_eval.Sharded(shard_dir, worker, identity) if shard_dir else None,
        )
        if scored is None:
            return None
    metrics = prior_eval.evaluate_prior(model)
    metrics.update(scored)
    if network is None:
        logging.warning(
            "no --classifier: FID, inception_score, KID and class accuracy are not computed "
            "(nothing is downloaded; pass a vim_tf classifier model dir, or an Inception v3 "
            "file of your own for the paper's Inception scores)"
        )
    return metrics


def evaluate_prior_runs(model_dir, classifier, runs, num_samples=1000, checkpoint=None):
    """Scores one prior under several sampling settings, each into its own JSON, as
    `evaluate(model_dir, run["output"], classifier, num_samples, ...)` would one by one.

    The prior, its test-split NLL, the scoring network, its sampler and the real images'
    statistics are computed once and shared by the runs (the same figures as separate calls:
    each run's samples depend only on its own settings and seed).

    Args:
      classifier: the scoring network (see `networks.load_scoring_network`).
      runs: dicts with `output` and optionally `acceptance_rate` (default 1), `floor_split`
        (default None) and `sampling` (as in `evaluate`).

    Returns:
      The metrics of each run, in order.
    """
    model, info, path = loading.load_network(
        model_dir, purpose="evaluate_prior_runs scores priors", checkpoint=checkpoint
    )
    if info.get("kind") != "prior":
        raise ValueError(f"{model_dir!r} holds a {info.get('kind')!r} model, not a prior")
    gin_utils.load_model_dir_config(model_dir)
    nll = prior_eval.evaluate_prior(model)
    network = networks.load_scoring_network(classifier)
    sampler = Sampler.of_trained_prior(model)
    reals = prior_eval.RealSummaries(network)
    out = []
    for run in runs:
        settings, seed = split_seed(run.get("sampling"))
        metrics = dict(nll)
        metrics.update(
            prior_eval.score_prior_samples(
                sampler,
                network,
                num_samples,
                run.get("acceptance_rate", 1.0),
                seed,
                settings,
                floor_split=run.get("floor_split"),
                reals=reals,
            )
        )
        metrics.update(
            quantizer_dir=info.get("quantizer_dir"),
            kind="prior",
            checkpoint=path,
            step=int(path.rsplit("-", 1)[-1]),
        )
        model_dir_lib.write_json(run["output"], metrics)
        logging.info("prior: %s -> %s", _shown(metrics), run["output"])
        out.append(metrics)
    return out


def _shown(metrics):
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
