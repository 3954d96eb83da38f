"""What `tools/sample.py` does: draw samples from a trained prior, decode, save npz and a grid."""

import numpy as np
from absl import logging

from vim_tf.eval import networks
from vim_tf.models import loading
from vim_tf.sampling import rejection
from vim_tf.sampling import sampler as sampler_lib
from vim_tf.sampling.settings import SamplingSettings
from vim_tf.utils import fs
from vim_tf.utils import images as image_utils

_PURPOSE = "sampling needs a prior (a VIM model dir)"


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
):
    """Samples from the prior in `model_dir`; writes samples.npz and grid.png to output_dir.

    Args:
      class_ids: classes to sample (default: every class, evenly; see `class_plan`).
      settings: `SamplingSettings` (default: the paper's).
      seed: the run's seed (the same seed, settings and batch_size: the same samples).
      acceptance_rate: < 1: classifier rejection sampling with the scoring network at
        `classifier` keeps the best fraction per class (the achieved rate is logged and
        returned as `acceptance_rate` in the arrays dict, not saved in the npz).
      jit_compile: XLA-compile the sampling loop (the same tokens as without it: the sampler's
        random numbers are counter-based); None: `vim_tf.sampling.settings.DEFAULT_JIT_COMPILE`.

    Returns:
      {"images": uint8 [N, H, W, 3], "tokens": int32 [N, h, w], "class_ids" (conditional
      priors): int32 [N], "acceptance_rate": float}.
    """
    settings = SamplingSettings() if settings is None else settings
    prior, info, _ = loading.load_network(model_dir, kinds=("prior",), purpose=_PURPOSE)
    if info.get("kind") != "prior":
        raise ValueError(f"{model_dir!r} holds a {info.get('kind')!r} model; {_PURPOSE}")
    plan = sampler_lib.class_plan(num_samples, prior.num_classes, class_ids)
    ids = sampler_lib.plan_ids(plan, num_samples)
    sampler = sampler_lib.Sampler.of_trained_prior(prior, jit_compile)
    if acceptance_rate < 1.0:
        network = _rejection_network(classifier, plan)
        tokens, images, achieved = rejection.rejection_sample(
            sampler, network, ids, acceptance_rate, seed, batch_size, settings
        )
    else:
        tokens, images = sampler.sample(ids, seed, settings, batch_size)
        achieved = 1.0
    arrays = write_samples(output_dir, images, tokens, plan)
    logging.info("wrote samples to %s (acceptance rate %.3f)", output_dir, achieved)
    return dict(arrays, acceptance_rate=achieved)


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
    not None) and `output_dir/grid.png` (a row per class). Returns the npz's arrays."""
    fs.makedirs(output_dir)
    images_u8 = image_utils.to_uint8(images)
    arrays = {"images": images_u8, "tokens": tokens.astype(np.int32)}
    if plan is not None:
        arrays["class_ids"] = plan
    fs.save_npz(fs.join(output_dir, "samples.npz"), **arrays)
    rows = len(np.unique(plan)) if plan is not None else None
    grid = image_utils.make_grid(images_u8, rows=rows)
    image_utils.save_png(fs.join(output_dir, "grid.png"), grid, scale=2)
    return arrays
