"""Inference batches spread over the local replicas of a tf.distribute strategy.

A batch of B rows is padded to a multiple of the R local replicas; replica r runs the function
on rows [r * B/R, (r + 1) * B/R) and is told that offset, so row-indexed randomness (the
sampler's counter-based draws) gives every row what one device running the whole batch gives
it. The outputs come back to the host as numpy arrays with the padding dropped.

Only the local replicas of this process take part (`strategy.extended.worker_devices`): under
MultiWorkerMirroredStrategy each worker runs its own batches (the work is split by worker, see
`vim_tf.utils.shards`), and nothing crosses workers per batch.
"""

import numpy as np
import tensorflow as tf


def num_local_replicas(strategy):
    """Replicas of `strategy` on this process's devices (1 without a strategy)."""
    if strategy is None:
        return 1
    return len(strategy.extended.worker_devices)


def worker_share(strategy):
    """(worker index, number of workers) of this process: the chief is worker 0; (0, 1)
    without a multi-worker strategy. Inference splits its shards by these."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 0, 1
    cluster = resolver.cluster_spec().as_dict()
    chiefs = len(cluster.get("chief", []))
    count = chiefs + len(cluster.get("worker", []))
    if resolver.task_type == "chief":
        return 0, count
    if resolver.task_type != "worker":
        raise ValueError(
            f"inference runs on chief and worker tasks; this is a {resolver.task_type!r} task"
        )
    return chiefs + resolver.task_id, count


def padded_size(batch, replicas):
    """The smallest multiple of `replicas` that holds `batch` rows."""
    return -(-batch // replicas) * replicas


class ReplicaRunner:
    """Runs `fn(rows, row_offset, *shared)` on each local replica's share of a batch.

    Args:
      fn: a traceable function of (rows: a nest of tensors [b, ...], row_offset: int32
        scalar, *shared: tensors every replica gets whole) -> a nest of tensors [b, ...]. It
        runs inside a `tf.function` (XLA-compiled with `jit_compile`; on TPU the replica step
        always compiles).
      strategy: a `tf.distribute.Strategy`, or None for the default device.
      jit_compile: XLA-compile the per-replica step.
    """

    def __init__(self, fn, strategy=None, jit_compile=False):
        self.strategy = strategy
        self.replicas = num_local_replicas(strategy)
        if strategy is None:
            self._run = tf.function(fn, jit_compile=bool(jit_compile))
            return
        # One compiled step per local replica: a function traced under one replica's device
        # keeps that placement, and XLA cannot run it on another replica's variables.
        steps = [tf.function(fn, jit_compile=bool(jit_compile)) for _ in range(self.replicas)]

        def replica_step(rows, row_offset, *shared):
            replica = tf.get_static_value(
                tf.distribute.get_replica_context().replica_id_in_sync_group
            )
            # Unknown while tracing (TPU replicates one program over its cores): one step.
            step = steps[0] if replica is None else steps[int(replica) % self.replicas]
            return step(rows, row_offset, *shared)

        def run(per_replica_rows, per_replica_offsets, *shared):
            return strategy.run(replica_step, args=(per_replica_rows, per_replica_offsets, *shared))

        self._run = tf.function(run)

    def __call__(self, rows, *shared, pad_to=None):
        """Runs a batch: `rows` a nest of numpy arrays [B, ...] -> the nest of outputs [B, ...]
        as numpy arrays.

        `pad_to`: run at least this many rows (the last row repeated, the extra outputs
        dropped), so that a run's short last batch reuses the full batches' compiled step.
        """
        flat = tf.nest.flatten(rows)
        batch = len(flat[0])
        size = padded_size(max(batch, pad_to or 0), self.replicas)
        padded = [_pad_rows(np.asarray(x), size) for x in flat]
        if self.strategy is None:
            whole = tf.nest.pack_sequence_as(rows, [tf.constant(x) for x in padded])
            out = self._run(whole, tf.constant(0, tf.int32), *shared)
            return tf.nest.map_structure(lambda t: t.numpy()[:batch], out)
        per = size // self.replicas

        def share(ctx):
            r = ctx.replica_id_in_sync_group % self.replicas
            part = [tf.constant(x[r * per : (r + 1) * per]) for x in padded]
            return tf.nest.pack_sequence_as(rows, part), tf.constant(r * per, tf.int32)

        distributed = self.strategy.experimental_distribute_values_from_function
        per_rows = distributed(lambda ctx: share(ctx)[0])
        per_offsets = distributed(lambda ctx: share(ctx)[1])
        out = self._run(per_rows, per_offsets, *shared)
        local = self.strategy.experimental_local_results

        def gather(t):
            return np.concatenate([p.numpy() for p in local(t)])[:batch]

        return tf.nest.map_structure(gather, out)


def _pad_rows(x, size):
    """x [B, ...] with its last row repeated up to `size` rows (B >= 1)."""
    if len(x) == size:
        return x
    return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])
