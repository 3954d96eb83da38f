"""Batched sampling: class plans, guidance checks and the traced sampler of a prior network.

A run samples a plan (one class id per sample) in batches; batch b draws with the seed
`seeds.batch_seed(seed, b)`, so a run's samples depend on (seed, settings, batch_size) only,
whichever `BatchSampler` draws them (in process, or through a served `generate` signature).
"""

import abc

import numpy as np
from absl import logging

from vim_tf.sampling import decoding, seeds
from vim_tf.sampling import settings as settings_lib
from vim_tf.sampling.settings import SamplingSettings
from vim_tf.utils import replicas


def class_plan(num_samples, num_classes, class_ids=None):
    """Class id of every sample, grouped by class (a grid row per class).

    Unconditional priors get None. Otherwise `num_samples` is split evenly over `class_ids`
    (default: every class), in class order: int32 [num_samples].
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


def plan_ids(plan, num_samples):
    """The class ids to feed the sampler: the plan, or zeros for an unconditional prior."""
    return plan if plan is not None else np.zeros([num_samples], np.int32)


def check_guidance(num_classes, class_dropout, cfg_scale):
    """Classifier-free guidance needs a class-conditional prior trained with class dropout (its
    null class is otherwise an untrained embedding, and guided samples are noise).

    Args:
      num_classes: the prior's class count (0: unconditional).
      class_dropout: the prior's training probability of the null class.
      cfg_scale: the guidance scale asked for (named in the error).
    """
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


class BatchSampler(abc.ABC):
    """Samples a plan in batches with the batch-seed rule; subclasses draw one batch.

    Subclasses set `num_classes` (0: unconditional) and implement `draw_batch(class_ids, seed,
    batch_index, settings) -> (tokens [B, h, w] int32, images [B, H, W, 3] float32 in [0, 1])`.
    """

    num_classes = 0

    @abc.abstractmethod
    def check_guidance(self, cfg_scale):
        """Raises ValueError when this sampler's prior cannot serve guidance at `cfg_scale`."""

    @abc.abstractmethod
    def draw_batch(self, class_ids, seed, batch_index, settings, pad_to=None):
        """One batch: (tokens [B, h, w] int32, images [B, H, W, 3] float32 in [0, 1]).

        `pad_to`: the run's batch size; a sampler with compiled steps may pad a short last
        batch to it (the same samples, no new compilation)."""

    def sample(self, class_ids, seed=0, settings=None, batch_size=100):
        """Returns (tokens int32 [N, h, w], images float32 [N, H, W, 3]) of every batch."""
        batches = list(self.sample_batches(class_ids, seed, settings, batch_size))
        return np.concatenate([t for _, t, _ in batches]), np.concatenate([i for *_, i in batches])

    def sample_batches(self, class_ids, seed=0, settings=None, batch_size=100):
        """Yields (class_ids int32 [B], tokens int32 [B, h, w], images float32 [B, H, W, 3]) one
        batch at a time (the batches of `sample`, with its seeds), holding no earlier batch.

        Args:
          class_ids: int [N], the plan (see `class_plan`; zeros for an unconditional prior).
          seed: int, the run's seed; batch b draws with `seeds.batch_seed(seed, b)`.
          settings: `SamplingSettings` (default: the paper's).
          batch_size: samples per batch.
        """
        settings = SamplingSettings() if settings is None else settings
        if settings.guided:
            self.check_guidance(settings.cfg_scale)
        n = len(class_ids)
        for b, start in enumerate(range(0, n, batch_size)):
            ids = np.asarray(class_ids[start : start + batch_size], np.int32)
            tokens, images = self.draw_batch(ids, seed, b, settings, pad_to=batch_size)
            logging.info("sampled %d/%d", min(start + batch_size, n), n)
            yield ids, tokens, images


class Sampler(BatchSampler):
    """Traced, batched sampling from a prior network, decoded to images by a tokenizer.

    Args:
      prior: a built `vim_tf.models.vim.VIM` network.
      tokenizer: has `decode(tokens [B, h, w]) -> images [B, H, W, 3] in [0, 1]` (the prior's
        stage-1 ViT-VQGAN).
      jit_compile: XLA-compile the sampling loop and the decoding (the same tokens as without
        it); None: `vim_tf.sampling.settings.DEFAULT_JIT_COMPILE`.
      use_cache: the key/value cache (False: recompute the prefix at every step; reference).
      class_dropout: the prior's training class dropout (guidance needs it > 0).
      strategy: a `tf.distribute.Strategy` whose local replicas each sample their share of
        every batch (the same samples as one device: the draws are numbered by batch row);
        None: the default device. The networks must have been built in its scope.
    """

    def __init__(
        self,
        prior,
        tokenizer,
        jit_compile=None,
        use_cache=True,
        class_dropout=0.0,
        strategy=None,
    ):
        self.prior = prior
        self.tokenizer = tokenizer
        if jit_compile is None:
            jit_compile = settings_lib.DEFAULT_JIT_COMPILE
        self.jit_compile = bool(jit_compile)
        self.use_cache = use_cache
        self.class_dropout = class_dropout
        self.strategy = strategy
        self.num_classes = prior.num_classes
        self._runners = {}

    @classmethod
    def of_trained_prior(cls, trained, jit_compile=None, use_cache=True, strategy=None):
        """The sampler of a `vim_tf.models.loading.TrainedPrior` (network, tokenizer and the
        class dropout it was trained with)."""
        return cls(
            trained.network,
            trained.tokenizer,
            jit_compile,
            use_cache,
            trained.class_dropout,
            strategy,
        )

    def check_guidance(self, cfg_scale):
        check_guidance(self.num_classes, self.class_dropout, cfg_scale)

    def _runner(self, guided):
        if guided not in self._runners:

            def run(class_ids, row_offset, seed, settings):
                tokens = decoding.sample_tokens(
                    self.prior,
                    class_ids,
                    seed,
                    settings,
                    guided=guided,
                    use_cache=self.use_cache,
                    row_offset=row_offset,
                )
                return tokens, self.tokenizer.decode(tokens)

            self._runners[guided] = replicas.ReplicaRunner(run, self.strategy, self.jit_compile)
        return self._runners[guided]

    def draw_batch(self, class_ids, seed, batch_index, settings, pad_to=None):
        return self._runner(settings.guided)(
            np.asarray(class_ids, np.int32),
            seeds.batch_seed(seed, batch_index),
            settings.traced(),
            pad_to=pad_to,
        )
