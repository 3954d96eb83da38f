"""The training loop shared by every model kind (quantizer, prior, classifier).

`train` (the gin configurable that `tools/train.py` runs) builds a `Trainer`: it creates the
experiment's `vim_tf.training.procedure.TrainingProcedure`, resumes from the newest checkpoint
in the model dir, runs the train step in loops of steps (one `tf.function` call each, no host
read inside) and, between loops, its actions (`vim_tf.training.actions`): non-finite steps,
the operative config, preemption, logging, image summaries, checkpoints.

Rerunning the same command resumes from the newest checkpoint in the model dir.
"""

import functools
import os
import shutil

import gin
import keras
import numpy as np
import tensorflow as tf
from absl import logging

from vim_tf.config import gin_utils
from vim_tf.data import input_pipeline
from vim_tf.training import actions as actions_lib
from vim_tf.training import distribute, guard, optimizers
from vim_tf.training.actions import (  # noqa: F401 - the trainer's public names
    PREEMPTED_EXIT_CODE,
    CheckpointWriteError,
    NonFiniteLossError,
    Preempted,
    make_checkpoint_manager,
    restore_newest_usable,
)
from vim_tf.training.fit import JIT_MODES, uses_xla
from vim_tf.utils import fs
from vim_tf.utils import model_dir as model_dir_lib

# `train.jit_compile` when the config does not set it.
DEFAULT_JIT_COMPILE = False


@gin.configurable
def create_model(model_class=gin.REQUIRED, **kwargs):
    """The experiment's model: `create_model.model_class = @VQGANTraining` in gin."""
    return model_class(**kwargs)


def build_model(strategy, **model_kwargs):
    """Creates the model, its variables and its optimizers inside the strategy's scope."""
    with strategy.scope():
        model = create_model(**model_kwargs)
        model.build_all()
        names = model.active_optimizer_names()
        model.compile_optimizers({name: optimizers.make_scoped_optimizer(name) for name in names})
        model.build_optimizers()
        guard.attach(model)
    return model


class Trainer:
    """Trains `create_model(**model_kwargs)` to `train_steps` in loops of steps, resuming from
    the newest checkpoint in `model_dir` and running `actions` between loops.

    What actions read (`vim_tf.training.actions`): `model`, `strategy`, `model_dir`, `out_dir`
    (this worker's directory), `chief`, `step` (the optimizer step after the last loop),
    `train_steps`, `global_batch`, `writer` (TensorBoard), `checkpointer`, `dataset_fn`.

    Args:
      model_dir: checkpoints, config, TensorBoard events and image grids go here.
      strategy: a tf.distribute strategy (default: the default strategy).
      dataset_fn: `dataset_fn(split=, training=, input_context=, seed=)` -> batches of the global
        batch size.
      train_steps: the optimizer step to train to.
      steps_per_loop: most steps run inside one tf.function call (loops also end at the
        model's phase boundaries and at multiples of each action's `every`).
      actions: `Action`s, run in this order after each loop.
      keep_checkpoints: newest checkpoints kept on disk.
      seed: seeds the initial weights and the dropout draws, and the data order (offset by the
        resume step).
      jit_compile: a JIT_MODES value.
      model_kwargs: extra keyword arguments for `create_model`.
    """

    def __init__(
        self,
        model_dir,
        strategy=None,
        *,
        dataset_fn,
        train_steps,
        steps_per_loop,
        actions=(),
        keep_checkpoints=3,
        seed=0,
        jit_compile=False,
        model_kwargs=None,
    ):
        self.model_dir = model_dir
        self.strategy = strategy or tf.distribute.get_strategy()
        self.dataset_fn = dataset_fn
        self.train_steps = train_steps
        self.steps_per_loop = steps_per_loop
        self.actions = list(actions)
        self.keep_checkpoints = keep_checkpoints
        self.seed = seed
        self.jit_compile = jit_compile
        self.model_kwargs = dict(model_kwargs or {})
        self.chief = distribute.is_chief(self.strategy)
        self.out_dir = distribute.worker_dir(model_dir, self.strategy)
        self.model = self.checkpointer = self.writer = None
        self.step = self.global_batch = None
        self._iterator = self._loop = self._phase = None

    def run(self):
        """Trains (or resumes) to `train_steps`; returns the model."""
        self._prepare()
        if self.step >= self.train_steps:
            logging.info(
                "already trained to step %d (train_steps=%d); nothing to do",
                self.step,
                self.train_steps,
            )
        else:
            self._open_dataset()
            self._train()
        distribute.remove_worker_dir(self.model_dir, self.strategy)
        return self.model

    # ------------------------------------------------------------------------- setup
    def _prepare(self):
        """Builds the model, restores the newest usable checkpoint, records the model."""
        _check_writable(self.out_dir)
        # The initial weights and the dropout seeds follow from `seed` (every worker alike).
        keras.utils.set_random_seed(self.seed)
        self.model = build_model(self.strategy, **self.model_kwargs)
        if self.chief:
            # After the model is built: a configuration error leaves the model dir untouched.
            gin_utils.save_config(self.model_dir)
        self.model.describe()
        self.checkpointer = actions_lib.Checkpointer(
            self.model, self.out_dir, self.keep_checkpoints
        )
        if self.chief:
            _remove_stale_temporaries(self.out_dir)
        # Every worker resumes from the chief's checkpoints (a non-chief's own dir is temporary),
        # so all workers start at the same step with the same weights.
        restored = self.checkpointer.restore(None if self.chief else self.model_dir)
        if restored:
            logging.info("resumed from %s at step %d", restored, int(self.model.step.numpy()))
        _check_free_space(self.out_dir, self.model)
        self.step = int(self.model.step.numpy())
        if self.chief:
            self._record_model()

    def _record_model(self):
        """Writes what later tools read about the model (its kind, sizes and config)."""
        info = dict(self.model.model_info(), train_steps=self.train_steps)
        model_dir_lib.write_model_info(self.model_dir, info)
        model_dir_lib.write_json(
            fs.join(self.model_dir, model_dir_lib.MODEL_CONFIG_FILE), self.model.network_config()
        )

    def _open_dataset(self):
        """The distributed training iterator (data order seeded by `seed` + the start step)."""
        batch_sizes = []
        start = self.step

        def dataset_from_context(ctx):
            ds = self.dataset_fn(
                split="train", training=True, input_context=ctx, seed=self.seed + start
            )
            first = next(iter(ds.element_spec.values()))  # images or tokens: same batch dim
            batch_sizes.append(int(first.shape[0]) * ctx.num_replicas_in_sync)
            return ds

        self._iterator = iter(self.strategy.distribute_datasets_from_function(dataset_from_context))
        self.global_batch = batch_sizes[0]

    # ------------------------------------------------------------------------- training
    def _train(self):
        if self.chief:
            self.writer = tf.summary.create_file_writer(self.out_dir)
        else:
            self.writer = tf.summary.create_noop_writer()
        try:
            for action in self.actions:
                action.begin(self)
            logging.info(
                "training %s from step %d to %d (global batch %d, %d replica(s)) in %s",
                type(self.model).__name__,
                self.step,
                self.train_steps,
                self.global_batch,
                self.strategy.num_replicas_in_sync,
                self.model_dir,
            )
            while self.step < self.train_steps:
                self._run_loop()
            for action in self.actions:
                action.finish(self)
        finally:
            for action in self.actions:
                action.close(self)
            self.writer.flush()

    def _run_loop(self):
        """Runs one loop of steps, then the actions."""
        self._select_phase()
        target = self._next_stop()
        self._loop(self._iterator, tf.constant(target - self.step, tf.int32))
        # Skipped updates do not advance the optimizer: the step is what was applied.
        self.step = int(self.model.step.numpy())
        for action in self.actions:
            action.after_loop(self)
        if self.step != target:
            return  # skipped steps: the rest of this stretch runs first
        for action in self.actions:
            if action.every and (self.step % action.every == 0 or self.step == self.train_steps):
                action.at_step(self)
        self.writer.flush()

    def _boundaries(self):
        return sorted(b for b in self.model.phase_boundaries() if 0 < b < self.train_steps)

    def _next_stop(self):
        """Where the next loop ends: a multiple of steps_per_loop or of an action's `every`, a
        phase boundary, or the last step, whichever comes first."""
        periods = [self.steps_per_loop] + [a.every for a in self.actions if a.every]
        return min(
            self.train_steps,
            *[(self.step // p + 1) * p for p in periods],
            *[b for b in self._boundaries() if b > self.step],
        )

    def _select_phase(self):
        """Selects the model's phase for the current step; traces a new loop when it changed."""
        phase = sum(self.step >= b for b in self._boundaries())
        if phase == self._phase:
            return
        self.model.set_phase(self.step)
        self._loop, self._phase = self._make_loop(), phase
        logging.info(
            "train step from step %d: %s",
            self.step,
            "XLA-compiled" if uses_xla(self.jit_compile, self.model) else "graph mode (no XLA)",
        )

    def _make_loop(self):
        return make_train_loop(self.model, self.strategy, self.jit_compile)


def make_train_loop(model, strategy, jit_compile=DEFAULT_JIT_COMPILE):
    """A tf.function `loop(iterator, num_steps)` running `num_steps` >= 1 train steps of `model`
    (no host read inside): all but the last without the log-only statistics
    (`train_step(..., summarize=False)`), the last with them.

    Args:
      model: a `TrainingProcedure`, in its current phase.
      strategy: the tf.distribute strategy the model was built in.
      jit_compile: a JIT_MODES value (XLA-compile each step, see `train`).
    """
    xla = uses_xla(jit_compile, model)

    def compiled(summarize):
        fn = functools.partial(model.train_step, summarize=summarize)
        return tf.function(fn, jit_compile=True) if xla else fn

    quiet_step, summary_step = compiled(False), compiled(True)

    @tf.function
    def loop(it, num_steps):
        for _ in tf.range(num_steps - 1):
            strategy.run(quiet_step, args=(next(it),))
        strategy.run(summary_step, args=(next(it),))

    return loop


def _check_train_args(steps_per_loop, jit_compile, nonfinite, **positive_ints):
    """Raises ValueError naming the first bad `train.*` setting."""
    for name, value in positive_ints.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"train.{name} must be a positive int, got {value!r}")
    if steps_per_loop is not None and (not isinstance(steps_per_loop, int) or steps_per_loop < 1):
        raise ValueError(
            f"train.steps_per_loop must be a positive int or None, got {steps_per_loop!r}"
        )
    if jit_compile not in JIT_MODES:
        raise ValueError(f"train.jit_compile must be one of {list(JIT_MODES)}, got {jit_compile!r}")
    if nonfinite not in ("stop", "skip"):
        raise ValueError(f"train.nonfinite must be 'stop' or 'skip', got {nonfinite!r}")


def default_actions(
    checkpoint_every,
    log_every,
    image_every,
    summary_split="test",
    nonfinite="stop",
    max_skipped_steps=100,
    handle_sigterm=True,
):
    """The actions `train` runs between loops, in order (see `train` for the arguments)."""
    return [
        actions_lib.NonFiniteHandling(nonfinite, max_skipped_steps),
        actions_lib.OperativeConfig(),
        *([actions_lib.Preemption()] if handle_sigterm else []),
        actions_lib.Logging(log_every),
        actions_lib.ImageSummaries(image_every, summary_split),
        actions_lib.Checkpointing(checkpoint_every),
    ]


@gin.configurable(denylist=["model_dir", "strategy"])
def train(
    model_dir,
    strategy=None,
    dataset_fn=input_pipeline.make_dataset,
    train_steps=gin.REQUIRED,
    checkpoint_every=gin.REQUIRED,
    log_every=100,
    image_every=1000,
    steps_per_loop=None,
    keep_checkpoints=3,
    seed=0,
    jit_compile=DEFAULT_JIT_COMPILE,
    summary_split="test",
    nonfinite="stop",
    max_skipped_steps=100,
    handle_sigterm=True,
    model_kwargs=None,
):
    """Trains `create_model()` on `dataset_fn(split='train')` to `train_steps`, resuming if possible.

    Args:
      model_dir: checkpoints, config, TensorBoard events and image grids go here.
      strategy: a tf.distribute strategy (default: the default strategy).
      dataset_fn: `dataset_fn(split=, training=, input_context=, seed=)` -> batches of the global
        batch size (gin binds its dataset, image size and batch size).
      train_steps, checkpoint_every, log_every, image_every: in optimizer steps.
      steps_per_loop: most steps run inside one tf.function call (default: min(log_every,
        10)); a SIGTERM is acted on between loops, so this bounds the reaction time.
      keep_checkpoints: newest checkpoints kept on disk.
      seed: seeds the initial weights and the dropout draws (`keras.utils.set_random_seed`) and
        the data order (offset by the resume step, so a resumed run does not replay the first
        batches).
      jit_compile: XLA-compile the train step: True, False, or 'except_adversarial' (XLA while
        `model.adversarial_active` is False: on CPU, XLA runs the discriminator's convolutions
        slower than oneDNN). TPUStrategy compiles every step whatever this says.
      summary_split: split whose first batch is shown in image summaries.
      nonfinite: what a step with a non-finite loss or gradient does. Its update is never applied;
        'stop' then ends the run with NonFiniteLossError naming the step and the last good
        checkpoint; 'skip' goes on (the batch is dropped) and counts it in train/skipped_steps.
      max_skipped_steps: with nonfinite='skip', more skipped steps than this in one run stop it.
      handle_sigterm: on SIGTERM (preemption), save a checkpoint at the current step and exit
        with status PREEMPTED_EXIT_CODE; rerunning the command resumes there.
      model_kwargs: extra keyword arguments for `create_model` (e.g. the quantizer of a prior).

    Returns:
      The trained model.
    """
    _check_train_args(
        steps_per_loop,
        jit_compile,
        nonfinite,
        train_steps=train_steps,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
        image_every=image_every,
        keep_checkpoints=keep_checkpoints,
        max_skipped_steps=max_skipped_steps,
    )
    actions = default_actions(
        checkpoint_every,
        log_every,
        image_every,
        summary_split,
        nonfinite,
        max_skipped_steps,
        handle_sigterm,
    )
    trainer = Trainer(
        model_dir,
        strategy,
        dataset_fn=dataset_fn,
        train_steps=train_steps,
        steps_per_loop=steps_per_loop or min(log_every, 10),
        actions=actions,
        keep_checkpoints=keep_checkpoints,
        seed=seed,
        jit_compile=jit_compile,
        model_kwargs=model_kwargs,
    )
    return trainer.run()


def _remove_stale_temporaries(directory):
    """Removes `ckpt-N_temp` dirs: a save killed midway leaves them; no checkpoint refers to them."""
    for path in fs.glob(directory, "ckpt-*_temp"):
        if fs.isdir(path):
            logging.info("removing %s (left by an interrupted checkpoint write)", path)
            fs.rmtree(path, ignore_errors=True)


def _checkpoint_bytes(model):
    total = 0
    for opt in model.named_optimizers().values():
        total += sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in opt.variables)
    total += sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in model.variables)
    return total


def _check_free_space(directory, model):
    """Fails before training when the disk cannot hold two checkpoints (local dirs only)."""
    if fs.is_remote(directory):
        logging.info("not checking free space of %s (not a local disk)", directory)
        return
    need = 2 * _checkpoint_bytes(model)
    free = shutil.disk_usage(directory).free
    if free < need:
        raise CheckpointWriteError(
            f"{directory!r} has {free / 2**20:.1f} MiB free, but a checkpoint of this model takes "
            f"{need / 2 / 2**20:.1f} MiB and two must fit (one being written while the last "
            "good one is kept): free disk space or use another --model_dir"
        )


def _check_writable(directory):
    try:
        fs.makedirs(directory)
        probe = fs.join(directory, f".write-probe-{os.getpid()}")
        with fs.open(probe, "w") as f:
            f.write("ok")
        fs.remove(probe)
    except (OSError, tf.errors.OpError) as e:
        raise OSError(f"model dir {directory!r} is not writable: {e}") from e
