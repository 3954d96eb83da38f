"""The training loop shared by every model kind (quantizer, prior, classifier).

A model trained here is a `keras.Model` with:
  - `optimizer_names` (gin scopes of `make_optimizer`) and `compile(**optimizers)`,
  - `build_all()`, `build_optimizers()`, `checkpoint_items()`, `step` (a counter variable),
  - `train_step(batch)` updating `metrics` (keras.metrics.Mean trackers),
  - optionally `phase_boundaries()` / `set_phase(step)` (steps where the traced step changes),
    `summary_images(batch)`, `model_info()`, `describe()`.

Rerunning the same command resumes from the newest checkpoint in the model dir.
"""

import math
import os
import shutil
import signal
import threading
import time

import gin
import keras
import numpy as np
import tensorflow as tf
from absl import logging

from vim_tf.config import gin_utils
from vim_tf.data import input_pipeline
from vim_tf.training import distribute, guard, optimizers
from vim_tf.utils import fs
from vim_tf.utils import images as image_utils
from vim_tf.utils import model_dir as model_dir_lib


class NonFiniteLossError(RuntimeError):
    pass


class CheckpointWriteError(OSError):
    pass


# The exit status after a SIGTERM (preemption) was handled: a checkpoint was saved, rerun the same
# command to resume. Non-zero so schedulers restart the job; 143 = 128 + SIGTERM by convention.
PREEMPTED_EXIT_CODE = 143

# train.jit_compile values: no XLA, XLA for every step, XLA while the discriminator is off.
JIT_MODES = (False, True, "except_adversarial")


class Preempted(SystemExit):
    """Raised after SIGTERM once the checkpoint is saved; exits with PREEMPTED_EXIT_CODE."""

    def __init__(self, message):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message = message

    def __str__(self):
        return self.message


@gin.configurable
def create_model(model_class=gin.REQUIRED, **kwargs):
    """The experiment's model: `create_model.model_class = @ViTVQGAN` in gin."""
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


def make_checkpoint_manager(model, directory, max_to_keep=3):
    ckpt = tf.train.Checkpoint(**model.checkpoint_items())
    manager = tf.train.CheckpointManager(
        ckpt, directory, max_to_keep=max_to_keep, checkpoint_name="ckpt"
    )
    return ckpt, manager


def _format_eta(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}m{seconds % 60:02d}s"


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
    jit_compile=False,
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
      steps_per_loop: steps run inside one tf.function call (default: min(log_every, 10)). A
        SIGTERM is acted on between loops, so this bounds the reaction time.
      keep_checkpoints: newest checkpoints kept on disk.
      seed: seeds the initial weights and the dropout draws (`keras.utils.set_random_seed`) and
        the data order (offset by the resume step, so a resumed run does not replay the first
        batches).
      jit_compile: XLA-compile the train step: True, False, or 'except_adversarial' (XLA for
        the phases in which the model's discriminator is off, `model.adversarial_active` False;
        graph mode once it is on). On CPU, XLA speeds up the transformer steps (~1.35x stage 1,
        ~1.27x the prior's step) but runs the discriminator's convolutions several times slower
        than TensorFlow's oneDNN kernels. TPUStrategy compiles every step whatever this says.
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
    strategy = strategy or tf.distribute.get_strategy()
    for name, value in (
        ("train_steps", train_steps),
        ("checkpoint_every", checkpoint_every),
        ("log_every", log_every),
        ("image_every", image_every),
        ("keep_checkpoints", keep_checkpoints),
        ("max_skipped_steps", max_skipped_steps),
    ):
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
    steps_per_loop = steps_per_loop or min(log_every, 10)
    chief = distribute.is_chief(strategy)
    out_dir = distribute.worker_dir(model_dir, strategy)
    _check_writable(out_dir)
    # The initial weights and the dropout seeds follow from `seed` (every worker alike).
    keras.utils.set_random_seed(seed)
    model = build_model(strategy, **(model_kwargs or {}))
    if chief:
        # After the model is built: a configuration error leaves the model dir untouched.
        gin_utils.save_config(model_dir)
    model.describe()
    ckpt, manager = make_checkpoint_manager(model, out_dir, keep_checkpoints)
    if chief:
        _remove_stale_temporaries(out_dir)
    # Every worker resumes from the chief's checkpoints (a non-chief's own dir is temporary),
    # so all workers start at the same step with the same weights.
    restored = restore_newest_usable(
        ckpt,
        manager
        if chief
        else tf.train.CheckpointManager(ckpt, model_dir, max_to_keep=None, checkpoint_name="ckpt"),
    )
    if restored:
        logging.info("resumed from %s at step %d", restored, int(model.step.numpy()))
    _check_free_space(out_dir, model)
    start = int(model.step.numpy())
    if chief:
        model_dir_lib.write_model_info(model_dir, dict(model.model_info(), train_steps=train_steps))
        model_dir_lib.write_json(
            fs.join(model_dir, model_dir_lib.MODEL_CONFIG_FILE), model.network_config()
        )
    if start >= train_steps:
        logging.info(
            "already trained to step %d (train_steps=%d); nothing to do", start, train_steps
        )
        distribute.remove_worker_dir(model_dir, strategy)
        return model

    batch_sizes = []

    def dataset_from_context(ctx):
        ds = dataset_fn(split="train", training=True, input_context=ctx, seed=seed + start)
        first = next(iter(ds.element_spec.values()))  # images or tokens: same batch dim
        batch_sizes.append(int(first.shape[0]) * ctx.num_replicas_in_sync)
        return ds

    iterator = iter(strategy.distribute_datasets_from_function(dataset_from_context))
    global_batch = batch_sizes[0]
    summary_batch = next(iter(dataset_fn(split=summary_split, training=False, cache=False)))

    writer = tf.summary.create_file_writer(out_dir) if chief else tf.summary.create_noop_writer()
    boundaries = sorted(b for b in model.phase_boundaries() if 0 < b < train_steps)
    state = guard.state_of(model)

    def uses_xla():
        """Whether the current phase's step is XLA-compiled (after `set_phase`)."""
        if jit_compile == "except_adversarial":
            return not model.adversarial_active
        return jit_compile

    stop_on_nonfinite = nonfinite == "stop"
    # In 'stop' mode the guard applies no update after a skipped one, so the loop needs no
    # per-step check (a host round trip on TPU): the stop is decided after the loop.
    state.halt_after_skip = stop_on_nonfinite

    def make_loop():
        step_fn = model.train_step
        if uses_xla():
            step_fn = tf.function(step_fn, jit_compile=True)

        @tf.function
        def loop(it, num_steps):
            for _ in tf.range(num_steps):
                strategy.run(step_fn, args=(next(it),))

        return loop

    summaries = _ImageSummaries(model, strategy, summary_batch)

    def last_good():
        return manager.latest_checkpoint or "none (no checkpoint was written yet)"

    def save(step):
        _check_finite_weights(model, step, last_good())
        try:
            path = manager.save(checkpoint_number=step)
        except (tf.errors.OpError, OSError) as e:
            raise CheckpointWriteError(
                f"could not write the checkpoint of step {step} to {out_dir!r}: {e}. The newest "
                f"good checkpoint is {last_good()}; free disk space or use another --model_dir, "
                "then rerun the same command to resume"
            ) from e
        logging.info("saved %s", path)
        nonlocal saved_step
        saved_step = step
        return path

    saved_step = start if restored else None
    sigterm = _SigtermFlag() if handle_sigterm else None
    phase = None
    loop = None
    operative_saved = False
    step = start
    skipped_total = 0
    t_log = time.time()
    steps_since_log = 0
    logging.info(
        "training %s from step %d to %d (global batch %d, %d replica(s)) in %s",
        type(model).__name__,
        start,
        train_steps,
        global_batch,
        strategy.num_replicas_in_sync,
        model_dir,
    )
    try:
        while step < train_steps:
            new_phase = sum(step >= b for b in boundaries)
            if new_phase != phase:
                model.set_phase(step)
                loop, phase = make_loop(), new_phase
                logging.info(
                    "train step from step %d: %s",
                    step,
                    "XLA-compiled" if uses_xla() else "graph mode (no XLA)",
                )
            next_stop = min(
                train_steps,
                (step // steps_per_loop + 1) * steps_per_loop,
                (step // log_every + 1) * log_every,
                (step // checkpoint_every + 1) * checkpoint_every,
                *[b for b in boundaries if b > step],
            )
            loop(iterator, tf.constant(next_stop - step, tf.int32))
            # Skipped updates do not advance the optimizer: the step is what was applied.
            new_step = int(model.step.numpy())
            steps_since_log += new_step - step
            step = new_step
            skipped = int(state.skipped.numpy())
            if skipped > skipped_total:
                first = int(state.first_step.numpy()) + 1
                if stop_on_nonfinite:
                    raise NonFiniteLossError(
                        f"non-finite loss or gradient at step {first} (its update was not "
                        f"applied; train.nonfinite='skip' would skip such steps); the last good "
                        f"checkpoint is {last_good()} and nothing was saved after it"
                    )
                logging.warning(
                    "skipped %d step(s) with a non-finite loss or gradient (first at step %d; "
                    "%d in this run)",
                    skipped - skipped_total,
                    first,
                    skipped,
                )
                if skipped > max_skipped_steps:
                    raise NonFiniteLossError(
                        f"{skipped} steps had a non-finite loss or gradient by step {step}, more "
                        f"than train.max_skipped_steps={max_skipped_steps}; the last good "
                        f"checkpoint is {last_good()}"
                    )
                skipped_total = skipped
                state.first_step.assign(-1)
            if chief and not operative_saved:
                # Only now has every configurable been called, so the record is complete.
                gin_utils.save_operative_config(model_dir)
                operative_saved = True
            if sigterm is not None and _agreed(strategy, sigterm.is_set()):
                path = last_good() if saved_step == step else save(step)
                message = (
                    f"SIGTERM: stopped at step {step}/{train_steps} with checkpoint {path}; "
                    "rerun the same command to resume from it"
                )
                logging.warning(message)
                raise Preempted(message)
            if step != next_stop:
                continue  # skipped steps: the rest of this stretch runs first
            if step % log_every == 0 or step == train_steps:
                _log(
                    model,
                    writer,
                    step,
                    train_steps,
                    global_batch,
                    steps_since_log,
                    time.time() - t_log,
                    skipped_total,
                    last_good,
                )
                t_log, steps_since_log = time.time(), 0
            if step % image_every == 0 or step == train_steps:
                grids = summaries.grids()
                with writer.as_default(step=step):
                    for k, grid in grids.items():
                        tf.summary.image(f"images/{k}", grid[None], step=step)
                if chief:
                    for k, grid in grids.items():
                        image_utils.save_png(fs.join(model_dir, f"{k}.png"), grid, scale=2)
            if step % checkpoint_every == 0 or step == train_steps:
                save(step)
            writer.flush()
    finally:
        if sigterm is not None:
            sigterm.uninstall()
        writer.flush()
    if chief:
        gin_utils.save_operative_config(model_dir)
    distribute.remove_worker_dir(model_dir, strategy)
    return model


class _ImageSummaries:
    """The model's `summary_images`, computed on the accelerator and laid out as grids.

    `model.summary_images(batch)` is traced once into a function that runs through
    `strategy.run` (compiled for the device on TPU, with the mirrored weights where they live)
    and returns {name: (images [n, H, W, 3] in [0, 1], rows)}; replica 0's images are copied to
    the host once per summary, never per step.
    """

    def __init__(self, model, strategy, batch):
        self._model = model
        self._strategy = strategy
        self._batch = batch
        self._fn = None
        self._rows = {}

    def _images(self, batch):
        out = self._model.summary_images(batch)
        self._rows = {k: rows for k, (_, rows) in out.items()}
        return {k: images for k, (images, _) in out.items()}

    def grids(self):
        """{name: uint8 [H', W', 3] grid}; {} for a model without image summaries."""
        if self._fn is None:
            self._fn = tf.function(lambda b: self._strategy.run(self._images, args=(b,)))
        out = self._fn(self._batch)
        grids = {}
        for k, images in out.items():
            first = self._strategy.experimental_local_results(images)[0]
            grids[k] = image_utils.make_grid(np.asarray(first), rows=self._rows[k])
        return grids


def _log(model, writer, step, train_steps, global_batch, steps, elapsed, skipped, last_good):
    # Trackers of a phase not yet started (e.g. the discriminator's) have no updates.
    # convert_to_tensor: a metric's count under a multi-replica strategy is a sync-on-read
    # variable (float() refuses it); reading it here sums the replicas.
    results = {
        m.name: float(m.result())
        for m in model.metrics
        if float(tf.convert_to_tensor(getattr(m, "count", 1))) > 0
    }
    if not all(math.isfinite(v) for v in results.values()):
        raise NonFiniteLossError(
            f"non-finite training metrics by step {step}: {results}; the last good "
            f"checkpoint is {last_good()} (nothing was saved after it)"
        )
    rate = steps * global_batch / max(elapsed, 1e-9)
    eta = (train_steps - step) * global_batch / max(rate, 1e-9)
    with writer.as_default(step=step):
        for k, v in results.items():
            tf.summary.scalar(f"train/{k}", v)
        tf.summary.scalar("train/images_per_second", rate)
        tf.summary.scalar("train/skipped_steps", skipped)
        for k, v in _learning_rates(model).items():
            tf.summary.scalar(f"train/learning_rate_{k}", v)
    shown = " ".join(f"{k}={v:.4g}" for k, v in results.items())
    logging.info(
        "step %d/%d (%d%%) | %s | %.0f img/s | eta %s%s",
        step,
        train_steps,
        100 * step // train_steps,
        shown,
        rate,
        _format_eta(eta),
        f" | skipped {skipped}" if skipped else "",
    )
    for m in model.metrics:
        m.reset_state()


class _SigtermFlag:
    """Records SIGTERM (the main thread's handler); the trainer acts on it between loops."""

    def __init__(self):
        self._event = threading.Event()
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint at the end of this loop")
        self._event.set()

    def is_set(self):
        return self._event.is_set()

    def uninstall(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def _agreed(strategy, flag):
    """True when any worker saw `flag` (workers must stop at the same step)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        if strategy not in _ANY_WORKER:

            @tf.function
            def any_worker(value):
                per_replica = strategy.run(lambda: tf.identity(value))
                return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

            _ANY_WORKER[strategy] = any_worker
        return float(_ANY_WORKER[strategy](tf.constant(1.0 if flag else 0.0))) > 0
    return flag


_ANY_WORKER = {}


def restore_newest_usable(ckpt, manager):
    """Restores the newest checkpoint that reads back whole; returns its path (None: none).

    A checkpoint that fails to read (a file damaged after it was written) is reported and the
    next older one is tried, so one bad file never strands a run.
    """
    for path in reversed(manager.checkpoints):
        try:
            ckpt.restore(path).assert_existing_objects_matched()
            return path
        except Exception as e:  # noqa: BLE001 - any read failure: try the next older one
            logging.error("checkpoint %s is unreadable (%s); trying the one before it", path, e)
    if manager.checkpoints:
        raise ValueError(
            f"none of the checkpoints in {manager.directory!r} could be read: "
            f"{manager.checkpoints}; move them away to start afresh"
        )
    return None


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


def _check_finite_weights(model, step, last_good):
    bad = [
        v.path for v in model.trainable_variables if not bool(tf.reduce_all(tf.math.is_finite(v)))
    ]
    if bad:
        raise NonFiniteLossError(
            f"weights became non-finite by step {step} ({len(bad)} variables, e.g. {bad[:3]}); "
            f"not saving them. The last good checkpoint is {last_good}"
        )


def _learning_rates(model):
    out = {}
    for name, opt in model.named_optimizers().items():
        # The schedule at the current step; a constant rate is a (mirrored) variable that
        # float() refuses under a multi-replica strategy, hence convert_to_tensor.
        out[name] = float(tf.convert_to_tensor(opt.learning_rate))
    return out


def _check_writable(directory):
    try:
        fs.makedirs(directory)
        probe = fs.join(directory, f".write-probe-{os.getpid()}")
        with fs.open(probe, "w") as f:
            f.write("ok")
        fs.remove(probe)
    except (OSError, tf.errors.OpError) as e:
        raise OSError(f"model dir {directory!r} is not writable: {e}") from e
