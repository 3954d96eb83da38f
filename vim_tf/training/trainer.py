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
import time

import gin
import tensorflow as tf
from absl import logging

from vim_tf.config import gin_utils
from vim_tf.data import input_pipeline
from vim_tf.training import distribute, optimizers
from vim_tf.utils import images as image_utils
from vim_tf.utils import model_dir as model_dir_lib


class NonFiniteLossError(RuntimeError):
    pass


@gin.configurable
def create_model(model_class=gin.REQUIRED, **kwargs):
    """The experiment's model: `create_model.model_class = @ViTVQGAN` in gin."""
    return model_class(**kwargs)


def build_model(strategy, **model_kwargs):
    """Creates the model, its variables and its optimizers inside the strategy's scope."""
    with strategy.scope():
        model = create_model(**model_kwargs)
        model.build_all()
        opts = {}
        for name in model.optimizer_names:
            if name == "discriminator" and getattr(model, "discriminator", None) is None:
                continue
            opts[name] = optimizers.make_scoped_optimizer(name)
        model.compile(**opts)
        model.build_optimizers()
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
    model_kwargs=None,
):
    """Trains `create_model()` on `dataset_fn(split='train')` to `train_steps`, resuming if possible.

    Args:
      model_dir: checkpoints, config, TensorBoard events and image grids go here.
      strategy: a tf.distribute strategy (default: the default strategy).
      dataset_fn: `dataset_fn(split=, training=, input_context=, seed=)` -> batches of the global
        batch size (gin binds its dataset, image size and batch size).
      train_steps, checkpoint_every, log_every, image_every: in optimizer steps.
      steps_per_loop: steps run inside one tf.function call (default: log_every).
      keep_checkpoints: newest checkpoints kept on disk.
      seed: data-order seed (offset by the resume step, so a resumed run does not replay the
        first batches).
      jit_compile: XLA-compile the train step.
      summary_split: split whose first batch is shown in image summaries.
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
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"train.{name} must be a positive int, got {value!r}")
    steps_per_loop = steps_per_loop or log_every
    chief = distribute.is_chief(strategy)
    out_dir = distribute.worker_dir(model_dir, strategy)
    _check_writable(out_dir)
    if chief:
        gin_utils.save_config(model_dir)

    model = build_model(strategy, **(model_kwargs or {}))
    if hasattr(model, "describe"):
        model.describe()
    ckpt, manager = make_checkpoint_manager(model, out_dir, keep_checkpoints)
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        logging.info("resumed from %s at step %d", manager.latest_checkpoint, int(model.step))
    start = int(model.step)
    if chief:
        info = model.model_info() if hasattr(model, "model_info") else {"kind": model.kind}
        model_dir_lib.write_model_info(model_dir, dict(info, train_steps=train_steps))
        model_dir_lib.write_json(
            os.path.join(model_dir, model_dir_lib.MODEL_CONFIG_FILE), model.get_config()
        )
    if start >= train_steps:
        logging.info(
            "already trained to step %d (train_steps=%d); nothing to do", start, train_steps
        )
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
    boundaries = sorted(
        b for b in getattr(model, "phase_boundaries", lambda: [])() if 0 < b < train_steps
    )

    def make_loop():
        step_fn = model.train_step
        if jit_compile:
            step_fn = tf.function(step_fn, jit_compile=True)

        @tf.function
        def loop(it, num_steps):
            for _ in tf.range(num_steps):
                strategy.run(step_fn, args=(next(it),))

        return loop

    phase = None
    loop = None
    operative_saved = False
    step = start
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
    while step < train_steps:
        new_phase = sum(step >= b for b in boundaries)
        if new_phase != phase:
            if hasattr(model, "set_phase"):
                model.set_phase(step)
            loop, phase = make_loop(), new_phase
        next_stop = min(
            train_steps,
            (step // steps_per_loop + 1) * steps_per_loop,
            (step // log_every + 1) * log_every,
            (step // checkpoint_every + 1) * checkpoint_every,
            *[b for b in boundaries if b > step],
        )
        loop(iterator, tf.constant(next_stop - step, tf.int32))
        steps_since_log += next_stop - step
        step = next_stop
        if chief and not operative_saved:
            # Only now has every configurable been called, so the record is complete.
            gin_utils.save_operative_config(model_dir)
            operative_saved = True
        if step % log_every == 0 or step == train_steps:
            # Trackers of a phase not yet started (e.g. the discriminator's) have no updates.
            results = {
                m.name: float(m.result())
                for m in model.metrics
                if float(getattr(m, "count", 1)) > 0
            }
            if not all(math.isfinite(v) for v in results.values()):
                raise NonFiniteLossError(
                    f"non-finite training metrics by step {step}: {results}; the last good "
                    f"checkpoint is {manager.latest_checkpoint} (nothing was saved after it)"
                )
            elapsed = time.time() - t_log
            rate = steps_since_log * global_batch / max(elapsed, 1e-9)
            eta = (train_steps - step) * global_batch / max(rate, 1e-9)
            with writer.as_default(step=step):
                for k, v in results.items():
                    tf.summary.scalar(f"train/{k}", v)
                tf.summary.scalar("train/images_per_second", rate)
                lr = _learning_rates(model)
                for k, v in lr.items():
                    tf.summary.scalar(f"train/learning_rate_{k}", v)
            shown = " ".join(f"{k}={v:.4g}" for k, v in results.items())
            logging.info(
                "step %d/%d (%d%%) | %s | %.0f img/s | eta %s",
                step,
                train_steps,
                100 * step // train_steps,
                shown,
                rate,
                _format_eta(eta),
            )
            for m in model.metrics:
                m.reset_state()
            t_log, steps_since_log = time.time(), 0
        if (step % image_every == 0 or step == train_steps) and hasattr(model, "summary_images"):
            grids = model.summary_images(summary_batch)
            with writer.as_default(step=step):
                for k, grid in grids.items():
                    tf.summary.image(f"images/{k}", grid, step=step)
            if chief:
                for k, grid in grids.items():
                    image_utils.save_png(os.path.join(model_dir, f"{k}.png"), grid[0], scale=2)
        if step % checkpoint_every == 0 or step == train_steps:
            path = manager.save(checkpoint_number=step)
            logging.info("saved %s", path)
        writer.flush()
    if chief:
        gin_utils.save_operative_config(model_dir)
    return model


def _learning_rates(model):
    out = {}
    for name in model.optimizer_names:
        opt = getattr(model, f"{name}_optimizer", None)
        if opt is None:
            continue
        out[name] = float(opt.learning_rate)  # the schedule evaluated at the current step
    return out


def _check_writable(directory):
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".write-probe-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise OSError(f"model dir {directory!r} is not writable: {e}") from e
