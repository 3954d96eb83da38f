"""Maps the `--strategy` flag to a tf.distribute strategy; chief/worker helpers."""

import json
import os

import tensorflow as tf
from absl import logging

from vim_tf.utils import fs

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def get_strategy(name="default", tpu_address=None):
    """Returns the strategy named by `name` (one of STRATEGIES).

    - default: the current default strategy (one device).
    - mirrored: all local GPUs, or every logical CPU device when there is no GPU.
    - multi_worker: MultiWorkerMirroredStrategy configured from the TF_CONFIG environment.
    - tpu: TPUStrategy on `tpu_address`: 'local' on a TPU VM, a TPU name or grpc:// address
      otherwise ('' or None: from the environment, e.g. TPU_NAME).
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}: valid are {', '.join(STRATEGIES)}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "--strategy=multi_worker needs the TF_CONFIG environment variable (cluster and "
                "task of this worker); see the README's multi-worker section"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    # 'local': the TPU chips of this TPU VM (no cluster to connect to). A name or grpc:// address
    # (a TPU node, a pod slice), or '' / None to take it from the environment (TPU_NAME, Colab):
    # resolved through the Cloud TPU API, then connected to before initializing.
    local = tpu_address == "local"
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu="local" if local else (tpu_address or "")
    )
    if not local:
        tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    logging.info("TPU devices: %s", tf.config.list_logical_devices("TPU"))
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy):
    """True on the worker that writes checkpoints, summaries and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    if task_type == "worker":
        has_chief = "chief" in json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
        return task_id == 0 and not has_chief
    return False


WORKERS_DIR = ".workers"


def worker_dir(model_dir, strategy):
    """Where this worker writes: the model dir for the chief, a private temp dir otherwise.

    Every worker must take part in saving a checkpoint (the save reads synchronized variables
    collectively), so the others write theirs to a temporary dir; `remove_worker_dir` deletes it
    when training ends. Nobody restores from it: every worker resumes from the chief's
    checkpoints in the model dir.
    """
    if is_chief(strategy):
        return model_dir
    resolver = strategy.cluster_resolver
    return fs.join(model_dir, WORKERS_DIR, f"{resolver.task_type}_{resolver.task_id}")


def remove_worker_dir(model_dir, strategy):
    """Deletes a non-chief worker's temporary dir (and `.workers` once empty); no-op on the chief."""
    if is_chief(strategy):
        return
    fs.rmtree(worker_dir(model_dir, strategy), ignore_errors=True)
    workers = fs.join(model_dir, WORKERS_DIR)
    try:
        if not fs.is_remote(workers):
            os.rmdir(workers)  # only succeeds when empty: another worker may still use it
        elif not fs.listdir(workers):
            fs.rmtree(workers)
    except OSError:
        pass
