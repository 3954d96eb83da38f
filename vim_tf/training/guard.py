"""Non-finite step guard: an optimizer update is applied only when the loss and every gradient
are finite on every replica; a skipped update is counted and its step recorded.

The trainer reads the counts after each loop of steps (never per step: on TPU a read is a host
round trip): by default a skipped step stops the run (`train.nonfinite='stop'`), naming the step;
with `train.nonfinite='skip'` training goes on and the skipped steps are logged. In 'stop' mode the
guard also refuses every later update of the loop once a step was skipped, so the weights the
trainer sees after the loop are those from before the bad step. Either way no NaN or Inf ever
reaches the weights or a checkpoint.

Only int32 and float32 values cross replicas or are broadcast to them (TPU's cross-replica sum
takes no int64); steps are recorded as int32.

The guard's variables live on a plain Python holder, outside the Keras/checkpoint object graph,
so checkpoints are the same with or without it.
"""

import tensorflow as tf
from keras import optimizers as keras_optimizers

# The dtype of the "non-finite here" flag summed across replicas: int32, the widest integer type
# TPU's cross-replica sum accepts (the TPU contract test checks every reduction's dtype).
FLAG_DTYPE = tf.int32


class GuardState:
    """Counters of one model's skipped updates (created in the strategy's scope).

    Attributes:
      halt_after_skip: Python bool; when True no update is applied once `skipped` > 0 (the
        trainer's 'stop' mode, which ends the run after the loop).
    """

    def __init__(self, halt_after_skip=False):
        self.halt_after_skip = halt_after_skip
        kw = dict(
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_WRITE,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        self.skipped = tf.Variable(0, dtype=tf.int32, name="nonfinite_skipped", **kw)
        # The optimizer step (0-based iterations) of the first skipped update, -1 when none.
        self.first_step = tf.Variable(-1, dtype=tf.int32, name="nonfinite_first_step", **kw)


def attach(model, halt_after_skip=False):
    """Gives `model` a GuardState (call inside the strategy's scope); returns it."""
    state = GuardState(halt_after_skip)
    # object.__setattr__ keeps the holder out of Keras's tracking (and so out of checkpoints).
    object.__setattr__(model, "_nonfinite_guard", state)
    return state


def state_of(model):
    return getattr(model, "_nonfinite_guard", None)


def _all_finite(tensors):
    flags = [tf.reduce_all(tf.math.is_finite(t)) for t in tensors if t is not None]
    return tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)


def apply_if_finite(model, optimizer, grads, variables, loss, step=None, count=True):
    """`optimizer.apply(grads, variables)` unless the loss or a gradient is non-finite on any replica.

    Args:
      step: the 0-based training step recorded for a skip (default: the optimizer's iterations).
      count: bool (tensor): whether a skip here counts as a new skipped step (False for a second
        update of a step whose first update was already skipped).

    Returns a bool tensor: True when the update was applied. With a LossScaleOptimizer (float16)
    only the loss is checked here: non-finite scaled gradients are its own business (it skips
    them and lowers the scale).
    """
    checked = [loss]
    if not isinstance(optimizer, keras_optimizers.LossScaleOptimizer):
        checked += list(grads)
    bad_here = tf.cast(tf.logical_not(_all_finite(checked)), FLAG_DTYPE)
    ctx = tf.distribute.get_replica_context()
    # Every replica takes the same branch: the flag is agreed across replicas first.
    ok = tf.equal(ctx.all_reduce(tf.distribute.ReduceOp.SUM, bad_here), 0)
    state = state_of(model)
    if state is not None:
        iterations = tf.cast(optimizer.iterations if step is None else step, tf.int32)
        # Mirrored state: the same on every replica, so this needs no agreement.
        halted = tf.logical_and(state.halt_after_skip, state.skipped > 0)
        bad = tf.cast(
            tf.logical_and(tf.logical_and(tf.logical_not(ok), count), tf.logical_not(halted)),
            tf.int32,
        )
        ok = tf.logical_and(ok, tf.logical_not(halted))
        state.skipped.assign_add(bad)
        state.first_step.assign(
            tf.where(
                tf.logical_and(state.first_step < 0, bad > 0),
                iterations,
                state.first_step,
            )
        )

    def apply():
        optimizer.apply(grads, variables)

    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.cond(ok, apply, lambda: None)
    else:
        # The optimizer's apply calls merge_call, which may not sit inside a replica-context cond;
        # take the branch in cross-replica context (the flag is the same on every replica).
        def cross_replica(distribution, ok, grads):
            flag = distribution.experimental_local_results(ok)[0]

            def apply_all():
                distribution.extended.call_for_each_replica(
                    lambda g: optimizer.apply(g, variables), args=(grads,)
                )

            tf.cond(flag, apply_all, lambda: None)

        ctx.merge_call(cross_replica, args=(ok, grads))
    return ok


def track(tracker, value, ok):
    """Updates a Mean tracker with `value` only when `ok` (a skipped step's NaN stays out)."""
    value = tf.cast(value, tf.float32)
    tracker.update_state(tf.where(ok, value, 0.0), sample_weight=tf.cast(ok, tf.float32))
