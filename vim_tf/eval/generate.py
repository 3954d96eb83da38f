"""What `tools/sample.py` does: draw samples from a trained prior, decode, save npz and a grid."""

import numpy as np
import tensorflow as tf
from absl import logging

from vim_tf.eval import evaluator
from vim_tf.models import loading, sampling
from vim_tf.utils import fs
from vim_tf.utils import images as image_utils


def class_plan(num_samples, num_classes, class_ids=None):
    """Class id of every sample, grouped by class (a grid row per class).

    Unconditional priors get None. Otherwise `num_samples` is split evenly over `class_ids`
    (default: every class), in class order.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if num_classes == 0:
        if class_ids:
            raise ValueError("class_ids given, but the prior is unconditional")
        return None
    ids = list(range(num_classes)) if not class_ids else [int(c) for c in class_ids]
    bad = [c for c in ids if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"class ids {bad} out of range: valid are 0..{num_classes - 1}")
    per = int(np.ceil(num_samples / len(ids)))
    return np.repeat(np.asarray(ids, np.int32), per)[:num_samples]


def check_guidance(num_classes, class_dropout, cfg_scale):
    """Classifier-free guidance needs a class-conditional prior trained with class dropout (its
    null class is otherwise an untrained embedding, and guided samples are noise)."""
    if not num_classes:
        raise ValueError(
            f"cfg_scale={cfg_scale}: classifier-free guidance needs a class-conditional prior; "
            "this one is unconditional (use cfg_scale=1)"
        )
    if not class_dropout:
        raise ValueError(
            f"cfg_scale={cfg_scale}: classifier-free guidance needs a prior trained with "
            "PriorTraining.class_dropout > 0; this one was trained with class_dropout=0, so its "
            "null class is untrained (use cfg_scale=1, or retrain with e.g. "
            "PriorTraining.class_dropout = 0.1)"
        )


class Sampler:
    """Traced, batched sampling from a prior network (+ decoding through its tokenizer).

    Args:
      model: the `VIM` network.
      tokenizer: the `ViTVQGAN` that decodes its tokens.
      jit_compile: XLA-compile the sampling loop.
      class_dropout: the prior's training class dropout (guidance needs it > 0).
    """

    def __init__(self, model, tokenizer, jit_compile=False, class_dropout=0.0):
        self.model = model
        self.tokenizer = tokenizer
        self.class_dropout = class_dropout
        self._fns = {}
        self.jit_compile = jit_compile

    def _fn(self, guided, use_cache):
        key = (guided, use_cache)
        if key not in self._fns:
            model, tokenizer = self.model, self.tokenizer

            def run(class_ids, seed, temperature, top_k, top_p, cfg_scale):
                tokens = model.sample_tokens(
                    class_ids,
                    seed,
                    temperature,
                    top_k,
                    top_p,
                    cfg_scale,
                    guided=guided,
                    use_cache=use_cache,
                )
                return tokens, tokenizer.decode(tokens)

            self._fns[key] = tf.function(run, jit_compile=self.jit_compile)
        return self._fns[key]

    def sample(
        self,
        class_ids,
        seed=0,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        cfg_scale=1.0,
        batch_size=100,
        use_cache=True,
    ):
        """Returns (tokens int32 [N, h, w], images float32 [N, H, W, 3]).

        Batch b draws with seed `seed * 1_000_003 + b`, so results depend on (seed, batch_size).
        """
        batches = list(
            self.sample_batches(
                class_ids, seed, temperature, top_k, top_p, cfg_scale, batch_size, use_cache
            )
        )
        return np.concatenate([t for _, t, _ in batches]), np.concatenate([i for *_, i in batches])

    def sample_batches(
        self,
        class_ids,
        seed=0,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        cfg_scale=1.0,
        batch_size=100,
        use_cache=True,
    ):
        """Yields (class_ids int32 [B], tokens int32 [B, h, w], images float32 [B, H, W, 3]) one
        batch at a time (the batches of `sample`, with its seeds), holding no earlier batch."""
        sampling.check_sampling_args(temperature, top_k, top_p, cfg_scale)
        guided = cfg_scale != 1.0
        if guided:
            check_guidance(self.model.num_classes, self.class_dropout, cfg_scale)
        fn = self._fn(guided, use_cache)
        n = len(class_ids)
        for b, start in enumerate(range(0, n, batch_size)):
            ids = np.asarray(class_ids[start : start + batch_size], np.int32)
            t, im = fn(
                tf.constant(ids),
                tf.constant(seed * 1_000_003 + b, tf.int32),
                tf.constant(temperature, tf.float32),
                tf.constant(top_k, tf.int32),
                tf.constant(top_p, tf.float32),
                tf.constant(cfg_scale, tf.float32),
            )
            logging.info("sampled %d/%d", min(start + batch_size, n), n)
            yield ids, t.numpy(), im.numpy()


def prior_sampler(prior, jit_compile=False):
    """The `Sampler` of a `loading.TrainedPrior` (its network, tokenizer and class dropout)."""
    return Sampler(prior.network, prior.tokenizer, jit_compile, prior.class_dropout)


def generate(
    model_dir,
    output_dir,
    num_samples,
    class_ids=None,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    cfg_scale=1.0,
    seed=0,
    batch_size=100,
    acceptance_rate=1.0,
    classifier=None,
    jit_compile=False,
):
    """Samples from the prior in `model_dir`; writes samples.npz and grid.png to output_dir.

    `jit_compile` XLA-compiles the sampling loop (the same tokens as without it: the sampler's
    random numbers are counter-based).

    With `acceptance_rate` < 1, classifier rejection sampling with the scoring network at
    `classifier` keeps the best fraction per class (the achieved rate is logged and returned
    as `acceptance_rate` in the arrays dict, not saved in the npz).
    """
    prior, info, _ = loading.load_network(
        model_dir, kinds=("prior",), purpose="sampling needs a prior (a VIM model dir)"
    )
    if info.get("kind") != "prior":
        raise ValueError(
            f"{model_dir!r} holds a {info.get('kind')!r} model; sampling needs a "
            "prior (a VIM model dir)"
        )
    plan = class_plan(num_samples, prior.network.num_classes, class_ids)
    ids = plan if plan is not None else np.zeros([num_samples], np.int32)
    settings = dict(temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale)
    sampling.check_sampling_args(**settings)
    if acceptance_rate < 1.0:
        if not classifier:
            raise ValueError(
                "--acceptance_rate < 1 needs --classifier (the network that ranks the candidates)"
            )
        if plan is None:
            raise ValueError(
                "rejection sampling ranks samples by their class: the prior is unconditional"
            )
        from vim_tf.eval import rejection

        network = evaluator.load_scoring_network(classifier)
        tokens, images, achieved = rejection.rejection_sample(
            prior_sampler(prior, jit_compile),
            network,
            ids,
            acceptance_rate,
            seed,
            batch_size,
            **settings,
        )
    else:
        tokens, images = prior_sampler(prior, jit_compile).sample(
            ids, seed, batch_size=batch_size, **settings
        )
        achieved = 1.0
    fs.makedirs(output_dir)
    images_u8 = image_utils.to_uint8(images)
    arrays = {"images": images_u8, "tokens": tokens.astype(np.int32)}
    if plan is not None:
        arrays["class_ids"] = plan
    npz = fs.join(output_dir, "samples.npz")
    fs.save_npz(npz, **arrays)
    rows = len(np.unique(plan)) if plan is not None else None
    grid = image_utils.make_grid(images_u8, rows=rows)
    grid_path = image_utils.save_png(fs.join(output_dir, "grid.png"), grid, scale=2)
    logging.info("wrote %s and %s (acceptance rate %.3f)", npz, grid_path, achieved)
    return dict(arrays, acceptance_rate=achieved)
