"""A sidecar evaluator: follows a training model dir and scores each new checkpoint."""

import csv
import io
import time

import tensorflow as tf
from absl import logging

from vim_tf.eval import evaluator
from vim_tf.utils import fs
from vim_tf.utils import model_dir as model_dir_lib

HISTORY_JSON = "eval_history.json"
HISTORY_CSV = "eval_history.csv"


def _checkpoints(model_dir):
    state = tf.train.get_checkpoint_state(model_dir)
    paths = list(state.all_model_checkpoint_paths) if state else []
    return sorted(paths, key=lambda p: int(p.rsplit("-", 1)[-1]))


def watch(model_dir, output_dir=None, poll_seconds=30, timeout_seconds=None, **eval_kwargs):
    """Scores every new checkpoint of `model_dir` until training's final one is scored.

    Each checkpoint is restored into a fresh model and scored by `evaluator.evaluate` (same
    metrics as a one-off run); scores go to TensorBoard (`<output_dir>/eval`), and to
    `eval_history.json` / `eval_history.csv` in the model dir (beside the operative config).
    Stops after the checkpoint at the model's `train_steps` (from model_info.json), or after
    `timeout_seconds` without a new checkpoint.

    Returns:
      the list of per-checkpoint metric dicts.
    """
    output_dir = output_dir or model_dir
    writer = tf.summary.create_file_writer(fs.join(output_dir, "eval"))
    history_path = fs.join(model_dir, HISTORY_JSON)
    history = []
    done = set()
    last_new = time.time()
    while True:
        final = model_dir_lib.read_model_info(model_dir).get("train_steps")
        new = [p for p in _checkpoints(model_dir) if p not in done]
        for path in new:
            step = int(path.rsplit("-", 1)[-1])
            done.add(path)
            try:
                metrics = evaluator.evaluate(
                    model_dir,
                    fs.join(output_dir, f"eval-{step}.json"),
                    checkpoint=path,
                    **eval_kwargs,
                )
            except (tf.errors.NotFoundError, ValueError) as e:
                # Training keeps only its newest checkpoints: one may go before it is read.
                logging.warning("skipping %s: %s", path, e)
                continue
            last_new = time.time()
            history.append(metrics)
            with writer.as_default(step=step):
                for k, v in metrics.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        tf.summary.scalar(f"eval/{k}", v)
            writer.flush()
            model_dir_lib.write_json(history_path, history)
            _write_csv(fs.join(model_dir, HISTORY_CSV), history)
            logging.info("scored checkpoint %s (step %d)", path, step)
            if final is not None and step >= final:
                return history
        if timeout_seconds is not None and time.time() - last_new > timeout_seconds:
            logging.info("no new checkpoint for %ds: stopping", timeout_seconds)
            return history
        time.sleep(poll_seconds)


def _write_csv(path, history):
    keys = sorted({k for m in history for k, v in m.items() if isinstance(v, (int, float, str))})
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for m in history:
        w.writerow(m)
    fs.write_text(path, buf.getvalue())
