"""What `tools/sample.py` does: draw samples from a trained prior, decode, save them.

Samples are written as they are drawn, in numbered shards (`OUT/samples-NNNNN-of-MMMMM.npz`,
each `shard_size` samples: whole batches, so shard contents do not depend on which worker or
how many replicas drew them) with a manifest (`OUT/samples_manifest.json`; see
`vim_tf.utils.shards`). A killed run, rerun with the same command, draws only the missing
shards. Once every shard exists the chief merges them into `OUT/samples.npz` (streamed, shard
by shard) and draws `OUT/grid.png`.
"""

import contextlib

import numpy as np
from absl import logging

from vim_tf.eval import networks
from vim_tf.models import loading
from vim_tf.sampling import rejection
from vim_tf.sampling import sampler as sampler_lib
from vim_tf.sampling.settings import SamplingSettings
from vim_tf.utils import fs, replicas, shards
from vim_tf.utils import images as image_utils

_PURPOSE = "sampling needs a prior (a VIM model dir)"
DEFAULT_BATCHES_PER_SHARD = 10
# The grid shows at most this many samples per class, of at most GRID_ROWS classes (or
# GRID_ROWS * GRID_PER_ROW samples of an unconditional prior).
GRID_PER_ROW = 16
GRID_ROWS = 32


def generate(
    model_dir,
    output_dir,
    num_samples,
    class_ids=None,
    settings=None,
    seed=0,
    batch_size=100,
    acceptance_rate=1.0,
    classifier=None,
    jit_compile=None,
    strategy=None,
    shard_size=None,
    merge=True,
    overwrite=False,
    return_arrays=True,
):
    """Samples from the prior in `model_dir` into `output_dir` (see the module docstring).

    Args:
      class_ids: classes to sample (default: every class, evenly; see `class_plan`).
      settings: `SamplingSettings` (default: the paper's).
      seed: the run's seed (the same seed, settings and batch_size: the same samples, whatever
        the strategy, replica and worker count).
      acceptance_rate: < 1: classifier rejection sampling with the scoring network at
        `classifier` keeps the best fraction per class (the achieved rate is logged and
        returned as `acceptance_rate`). It ranks every candidate of a class together, so it
        runs on one worker and writes samples.npz once, without shards.
      jit_compile: XLA-compile the sampling loop (the same tokens as without it: the sampler's
        random numbers are counter-based); None: `vim_tf.sampling.settings.DEFAULT_JIT_COMPILE`.
      strategy: a `tf.distribute.Strategy`: its local replicas share each batch; under
        MultiWorkerMirroredStrategy the workers share the shards and the chief merges.
      shard_size: samples per shard, a multiple of batch_size (default: 10 batches).
      merge: write the merged samples.npz (all samples in one file) besides the shards.
      overwrite: replace the shards of another run in `output_dir` instead of refusing.
      return_arrays: return the samples (read back from samples.npz, with `merge`).

    Returns:
      On the chief: {"images": uint8 [N, H, W, 3], "tokens": int32 [N, h, w], "class_ids"
      (conditional priors): int32 [N], "acceptance_rate": float} (without the arrays unless
      `return_arrays`); None on the other workers.
    """
    settings = SamplingSettings() if settings is None else settings
    share = worker, workers = replicas.worker_share(strategy)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        prior, info, checkpoint = loading.load_network(model_dir, ("prior",), _PURPOSE)
    plan = sampler_lib.class_plan(num_samples, prior.num_classes, class_ids)
    ids = sampler_lib.plan_ids(plan, num_samples)
    sampler = sampler_lib.Sampler.of_trained_prior(prior, jit_compile, strategy=strategy)
    if acceptance_rate < 1.0:
        if workers > 1:
            raise ValueError(
                "rejection sampling (acceptance_rate < 1) ranks all candidates of a class "
                "together and runs on one worker; use --strategy=mirrored or tpu for it"
            )
        run = (sampler, ids, acceptance_rate, seed, batch_size, settings)
        return _rejection_run(output_dir, plan, classifier, *run)
    params = dict(
        model_dir=fs.abspath(model_dir),
        checkpoint=fs.basename(checkpoint),
        quantizer_dir=info.get("quantizer_dir"),
        class_ids=[int(c) for c in class_ids or []],
        seed=int(seed),
        batch_size=int(batch_size),
        sampling=settings.as_dict(),
    )
    size = _shard_size(shard_size, batch_size)
    shard_set = shards.ShardSet(output_dir, "samples", ".npz", num_samples, size, params, *share)
    shard_set.open(write_manifest=worker == 0, overwrite=overwrite)
    if not _sample_pending(shard_set, sampler, ids, plan, seed, settings, batch_size):
        return None
    merged = merge_shards(shard_set, output_dir, plan is not None, merge)
    shard_set.finish(acceptance_rate=1.0)
    logging.info("wrote %d samples to %s", num_samples, output_dir)
    arrays = fs.load_npz(merged) if return_arrays and merge else {}
    return dict(arrays, acceptance_rate=1.0)


def _rejection_run(
    output_dir, plan, classifier, sampler, ids, acceptance_rate, seed, batch, settings
):
    """Classifier rejection sampling into `output_dir/samples.npz` and grid.png, in one go."""
    network = _rejection_network(classifier, plan)
    tokens, images, achieved = rejection.rejection_sample(
        sampler, network, ids, acceptance_rate, seed, batch, settings
    )
    arrays = write_samples(output_dir, images, tokens, plan)
    logging.info("wrote samples to %s (acceptance rate %.3f)", output_dir, achieved)
    return dict(arrays, acceptance_rate=achieved)


def _sample_pending(shard_set, sampler, ids, plan, seed, settings, batch_size):
    """Samples and writes this worker's unfinished shards; on the chief, then waits for every
    shard. Returns True on the chief (which goes on to merge), False on the other workers."""
    if settings.guided:
        sampler.check_guidance(settings.cfg_scale)
    for index in shard_set.pending():
        arrays = sample_shard(
            sampler, ids, plan, shard_set.bounds(index), seed, settings, batch_size
        )
        shard_set.write(index, lambda tmp, arrays=arrays: fs.save_npz(tmp, **arrays))
    if shard_set.worker_index != 0:
        logging.info(
            "worker %d of %d: wrote its shards; the chief merges",
            shard_set.worker_index,
            shard_set.num_workers,
        )
        return False
    shard_set.wait_for_all()
    return True


def _shard_size(shard_size, batch_size):
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shard_size is None:
        return DEFAULT_BATCHES_PER_SHARD * batch_size
    if shard_size < 1 or shard_size % batch_size:
        raise ValueError(
            f"shard_size {shard_size} must be a positive multiple of batch_size {batch_size} "
            "(a shard holds whole batches, so its samples do not depend on who drew it)"
        )
    return shard_size


def sample_shard(sampler, ids, plan, bounds, seed, settings, batch_size, uint8=True):
    """The arrays of the shard of samples [start, end) (`bounds`): batch b of the run (rows
    [b * batch_size, (b + 1) * batch_size)) draws with batch seed b, as `sample_batches` does.

    Returns:
      {"images": uint8 [n, H, W, 3] (float32 in [0, 1] without `uint8`), "tokens": int32
      [n, h, w], "class_ids": int32 [n] (when `plan` is not None)}.
    """
    start, end = bounds
    tokens, images = [], []
    for b in range(start // batch_size, -(-end // batch_size)):
        rows = ids[b * batch_size : min((b + 1) * batch_size, end)]
        t, x = sampler.draw_batch(rows, seed, b, settings, pad_to=batch_size)
        tokens.append(t.astype(np.int32))
        images.append(image_utils.to_uint8(x) if uint8 else x)
        logging.info("sampled %d/%d", min((b + 1) * batch_size, end), len(ids))
    arrays = {"images": np.concatenate(images), "tokens": np.concatenate(tokens)}
    if plan is not None:
        arrays["class_ids"] = np.asarray(plan[start:end], np.int32)
    return arrays


def merge_shards(shard_set, output_dir, conditional, merge=True):
    """Writes `output_dir/grid.png` and, with `merge`, `output_dir/samples.npz` (images
    streamed shard by shard, one shard in memory at a time). Returns the npz path."""
    path = fs.join(output_dir, "samples.npz")
    grid = _GridPicker(conditional)
    with contextlib.ExitStack() as stack:
        npz = stack.enter_context(fs.write_npz_stream(path)) if merge else None
        tokens, class_ids = [], []
        for index, shard_path in enumerate(shard_set.paths()):
            arrays = fs.load_npz(shard_path)
            if npz is not None and index == 0:
                npz.begin("images", np.uint8, (shard_set.num_items, *arrays["images"].shape[1:]))
            if npz is not None:
                npz.write(arrays["images"])
                tokens.append(arrays["tokens"])
                class_ids.append(arrays.get("class_ids"))
            grid.add(arrays["images"], arrays.get("class_ids"))
        if npz is not None:
            npz.add_array("tokens", np.concatenate(tokens))
            if conditional:
                npz.add_array("class_ids", np.concatenate(class_ids))
    image_utils.save_png(fs.join(output_dir, "grid.png"), grid.grid(), scale=2)
    return path


class _GridPicker:
    """The first GRID_PER_ROW samples of each of the first GRID_ROWS classes (a row each), or
    the first GRID_ROWS * GRID_PER_ROW samples of an unconditional prior."""

    def __init__(self, conditional):
        self.conditional = conditional
        self.rows = {}
        self.plain = []

    def add(self, images, class_ids):
        if not self.conditional:
            room = GRID_ROWS * GRID_PER_ROW - sum(len(x) for x in self.plain)
            self.plain.append(images[: max(room, 0)])
            return
        for c in np.unique(class_ids):
            if c not in self.rows and len(self.rows) == GRID_ROWS:
                continue
            row = self.rows.setdefault(int(c), [])
            room = GRID_PER_ROW - sum(len(x) for x in row)
            row.append(images[class_ids == c][: max(room, 0)])

    def grid(self):
        if not self.conditional:
            return image_utils.make_grid(np.concatenate(self.plain))
        picked = [np.concatenate(self.rows[c]) for c in sorted(self.rows)]
        return image_utils.make_grid(np.concatenate(picked), rows=len(picked))


def _rejection_network(classifier, plan):
    """The scoring network that ranks rejection sampling's candidates."""
    if not classifier:
        raise ValueError(
            "--acceptance_rate < 1 needs --classifier (the network that ranks the candidates)"
        )
    if plan is None:
        raise ValueError(
            "rejection sampling ranks samples by their class: the prior is unconditional"
        )
    return networks.load_scoring_network(classifier)


def write_samples(output_dir, images, tokens, plan):
    """Writes `output_dir/samples.npz` (images uint8, tokens int32, class_ids when `plan` is
    not None) and `output_dir/grid.png` (as `merge_shards` picks it). Returns the npz's arrays."""
    fs.makedirs(output_dir)
    images_u8 = image_utils.to_uint8(images)
    arrays = {"images": images_u8, "tokens": tokens.astype(np.int32)}
    if plan is not None:
        arrays["class_ids"] = plan
    fs.save_npz(fs.join(output_dir, "samples.npz"), **arrays)
    grid = _GridPicker(plan is not None)
    grid.add(images_u8, plan)
    image_utils.save_png(fs.join(output_dir, "grid.png"), grid.grid(), scale=2)
    return arrays
