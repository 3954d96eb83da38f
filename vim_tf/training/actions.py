"""What the trainer does between loops of steps: checkpointing, preemption, non-finite steps,
logging, image summaries.

`vim_tf.training.trainer.Trainer` runs the train step in loops of steps (one `tf.function` call
each, no host read inside) and hands control to its actions after every loop. An action is an
`Action` subclass; its hooks read the trainer's state (`trainer.step`, `trainer.model`, ...):

  begin(trainer)      once, before the first loop;
  after_loop(trainer) after every loop (also one cut short by skipped steps);
  at_step(trainer)    at the steps that are multiples of `every`, and at the last step;
  finish(trainer)     once, after the last step;
  close(trainer)      always at the end, also after an error (release what `begin` took).

An action's `every` also ends loops: the trainer never runs a loop past a multiple of it.
"""

import math
import signal
import threading
import time

import numpy as np
import tensorflow as tf
from absl import logging

from vim_tf.config import gin_utils
from vim_tf.training import guard
from vim_tf.utils import fs
from vim_tf.utils import images as image_utils

# The exit status after a SIGTERM (preemption) was handled: a checkpoint was saved, rerun the same
# command to resume. Non-zero so schedulers restart the job; 143 = 128 + SIGTERM by convention.
PREEMPTED_EXIT_CODE = 143


class NonFiniteLossError(RuntimeError):
    pass


class CheckpointWriteError(OSError):
    pass


class Preempted(SystemExit):
    """Raised after SIGTERM once the checkpoint is saved; exits with PREEMPTED_EXIT_CODE."""

    def __init__(self, message):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message = message

    def __str__(self):
        return self.message


class Action:
    """Something the trainer does between loops of steps (see the module docstring).

    Attributes:
      every: steps between `at_step` calls (None: the action has no schedule of its own).
    """

    every = None

    def begin(self, trainer):
        """Before the first loop."""

    def after_loop(self, trainer):
        """After every loop of steps."""

    def at_step(self, trainer):
        """At multiples of `every` and at the last step."""

    def finish(self, trainer):
        """After the last step."""

    def close(self, trainer):
        """At the end of training, also after an error."""


# ----------------------------------------------------------------------------- checkpoints
def make_checkpoint_manager(model, directory, max_to_keep=3):
    ckpt = tf.train.Checkpoint(**model.checkpoint_items())
    manager = tf.train.CheckpointManager(
        ckpt, directory, max_to_keep=max_to_keep, checkpoint_name="ckpt"
    )
    return ckpt, manager


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


class Checkpointer:
    """The model's checkpoints in one directory: restore, save (finite weights only), and the
    newest good one for error messages.

    Attributes:
      saved_step: the step of the checkpoint restored or last saved by this run (None: none).
    """

    def __init__(self, model, directory, max_to_keep=3):
        self.model = model
        self.directory = directory
        self.ckpt, self.manager = make_checkpoint_manager(model, directory, max_to_keep)
        self.saved_step = None

    def restore(self, source_dir=None):
        """Restores the newest usable checkpoint of `source_dir` (default: this directory).

        Returns its path, or None when there is none (the model keeps its initial weights).
        """
        manager = self.manager
        if source_dir is not None:
            manager = tf.train.CheckpointManager(
                self.ckpt, source_dir, max_to_keep=None, checkpoint_name="ckpt"
            )
        path = restore_newest_usable(self.ckpt, manager)
        if path:
            self.saved_step = int(self.model.step.numpy())
        return path

    def last_good(self):
        """The newest checkpoint in the directory, as error messages name it."""
        return self.manager.latest_checkpoint or "none (no checkpoint was written yet)"

    def save(self, step):
        """Saves the weights of `step`; refuses non-finite weights; returns the path."""
        _check_finite_weights(self.model, step, self.last_good())
        try:
            path = self.manager.save(checkpoint_number=step)
        except (tf.errors.OpError, OSError) as e:
            raise CheckpointWriteError(
                f"could not write the checkpoint of step {step} to {self.directory!r}: {e}. The "
                f"newest good checkpoint is {self.last_good()}; free disk space or use another "
                "--model_dir, then rerun the same command to resume"
            ) from e
        logging.info("saved %s", path)
        self.saved_step = step
        return path


def _check_finite_weights(model, step, last_good):
    bad = [
        v.path for v in model.trainable_variables if not bool(tf.reduce_all(tf.math.is_finite(v)))
    ]
    if bad:
        raise NonFiniteLossError(
            f"weights became non-finite by step {step} ({len(bad)} variables, e.g. {bad[:3]}); "
            f"not saving them. The last good checkpoint is {last_good}"
        )


class Checkpointing(Action):
    """Saves a checkpoint every `every` steps and at the last step."""

    def __init__(self, every):
        self.every = every

    def at_step(self, trainer):
        trainer.checkpointer.save(trainer.step)


# ----------------------------------------------------------------------------- non-finite steps
class NonFiniteHandling(Action):
    """Acts on the steps the non-finite guard (`vim_tf.training.guard`) skipped.

    Args:
      mode: 'stop' ends the run with NonFiniteLossError naming the step and the last good
        checkpoint; 'skip' logs the skipped steps and goes on.
      max_skipped_steps: in 'skip' mode, more skipped steps than this in one run stop it.
    """

    def __init__(self, mode="stop", max_skipped_steps=100):
        self.mode = mode
        self.max_skipped_steps = max_skipped_steps
        self.skipped = 0

    def begin(self, trainer):
        # In 'stop' mode the guard applies no update after a skipped one, so the loop needs no
        # per-step check (a host round trip on TPU): the stop is decided after the loop.
        guard.state_of(trainer.model).halt_after_skip = self.mode == "stop"

    def after_loop(self, trainer):
        state = guard.state_of(trainer.model)
        skipped = int(state.skipped.numpy())
        if skipped <= self.skipped:
            return
        first = int(state.first_step.numpy()) + 1
        last_good = trainer.checkpointer.last_good()
        if self.mode == "stop":
            raise NonFiniteLossError(
                f"non-finite loss or gradient at step {first} (its update was not applied; "
                f"train.nonfinite='skip' would skip such steps); the last good checkpoint is "
                f"{last_good} and nothing was saved after it"
            )
        logging.warning(
            "skipped %d step(s) with a non-finite loss or gradient (first at step %d; "
            "%d in this run)",
            skipped - self.skipped,
            first,
            skipped,
        )
        if skipped > self.max_skipped_steps:
            raise NonFiniteLossError(
                f"{skipped} steps had a non-finite loss or gradient by step {trainer.step}, more "
                f"than train.max_skipped_steps={self.max_skipped_steps}; the last good "
                f"checkpoint is {last_good}"
            )
        self.skipped = skipped
        state.first_step.assign(-1)


# ----------------------------------------------------------------------------- preemption
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


_ANY_WORKER = {}


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


class Preemption(Action):
    """On SIGTERM: save a checkpoint at the current step (every worker stops at the same step)
    and raise `Preempted`, which exits with PREEMPTED_EXIT_CODE; rerunning resumes there."""

    def __init__(self):
        self._flag = None

    def begin(self, trainer):
        self._flag = _SigtermFlag()

    def after_loop(self, trainer):
        if not _agreed(trainer.strategy, self._flag.is_set()):
            return
        checkpointer, step = trainer.checkpointer, trainer.step
        if checkpointer.saved_step == step:
            path = checkpointer.last_good()
        else:
            path = checkpointer.save(step)
        message = (
            f"SIGTERM: stopped at step {step}/{trainer.train_steps} with checkpoint {path}; "
            "rerun the same command to resume from it"
        )
        logging.warning(message)
        raise Preempted(message)

    def close(self, trainer):
        if self._flag is not None:
            self._flag.uninstall()
            self._flag = None


# ----------------------------------------------------------------------------- gin record
class OperativeConfig(Action):
    """Writes gin's operative config to the model dir (chief only) after the first loop, when
    every configurable has been called, and again at the end."""

    def __init__(self):
        self._saved = False

    def after_loop(self, trainer):
        if trainer.chief and not self._saved:
            gin_utils.save_operative_config(trainer.model_dir)
            self._saved = True

    def finish(self, trainer):
        if trainer.chief:
            gin_utils.save_operative_config(trainer.model_dir)


# ----------------------------------------------------------------------------- logging
def format_eta(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _metric_results(model):
    """{tracker name: mean} of the trackers updated since their last reset."""
    # Trackers of a phase not yet started (e.g. the discriminator's) have no updates.
    # convert_to_tensor: a metric's count under a multi-replica strategy is a sync-on-read
    # variable (float() refuses it); reading it here sums the replicas.
    return {
        m.name: float(m.result())
        for m in model.metrics
        if float(tf.convert_to_tensor(getattr(m, "count", 1))) > 0
    }


def _learning_rates(model):
    out = {}
    for name, opt in model.named_optimizers().items():
        # The schedule at the current step; a constant rate is a (mirrored) variable that
        # float() refuses under a multi-replica strategy, hence convert_to_tensor.
        out[name] = float(tf.convert_to_tensor(opt.learning_rate))
    return out


class Logging(Action):
    """Every `every` steps: the metric trackers' means, learning rates, images per second and
    skipped steps to TensorBoard (`train/...`) and the log (with an ETA); then resets the
    trackers. Non-finite means stop the run (NonFiniteLossError)."""

    def __init__(self, every):
        self.every = every
        self._time = None
        self._step = None

    def begin(self, trainer):
        self._time, self._step = time.time(), trainer.step

    def at_step(self, trainer):
        model, step = trainer.model, trainer.step
        results = _metric_results(model)
        if not all(math.isfinite(v) for v in results.values()):
            raise NonFiniteLossError(
                f"non-finite training metrics by step {step}: {results}; the last good "
                f"checkpoint is {trainer.checkpointer.last_good()} (nothing was saved after it)"
            )
        elapsed = max(time.time() - self._time, 1e-9)
        rate = (step - self._step) * trainer.global_batch / elapsed
        skipped = int(guard.state_of(model).skipped.numpy())
        with trainer.writer.as_default(step=step):
            for k, v in results.items():
                tf.summary.scalar(f"train/{k}", v)
            tf.summary.scalar("train/images_per_second", rate)
            tf.summary.scalar("train/skipped_steps", skipped)
            for k, v in _learning_rates(model).items():
                tf.summary.scalar(f"train/learning_rate_{k}", v)
        eta = (trainer.train_steps - step) * trainer.global_batch / max(rate, 1e-9)
        logging.info(
            "step %d/%d (%d%%) | %s | %.0f img/s | eta %s%s",
            step,
            trainer.train_steps,
            100 * step // trainer.train_steps,
            " ".join(f"{k}={v:.4g}" for k, v in results.items()),
            rate,
            format_eta(eta),
            f" | skipped {skipped}" if skipped else "",
        )
        for m in model.metrics:
            m.reset_state()
        self._time, self._step = time.time(), step


# ----------------------------------------------------------------------------- image summaries
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


class ImageSummaries(Action):
    """Every `every` steps: the model's summary images of the first batch of `split`, to
    TensorBoard (`images/<name>`) and, on the chief, to `<model_dir>/<name>.png`."""

    def __init__(self, every, split="test"):
        self.every = every
        self.split = split
        self._summaries = None

    def begin(self, trainer):
        batch = next(iter(trainer.dataset_fn(split=self.split, training=False, cache=False)))
        self._summaries = _ImageSummaries(trainer.model, trainer.strategy, batch)

    def at_step(self, trainer):
        step = trainer.step
        grids = self._summaries.grids()
        with trainer.writer.as_default(step=step):
            for k, grid in grids.items():
                tf.summary.image(f"images/{k}", grid[None], step=step)
        if trainer.chief:
            for k, grid in grids.items():
                image_utils.save_png(fs.join(trainer.model_dir, f"{k}.png"), grid, scale=2)
