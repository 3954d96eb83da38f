"""Checks that a model's train step computes the same update with and without XLA."""

import keras
import numpy as np
import tensorflow as tf


def graph_and_xla_updates(model, data, steps=2, learning_rate=0.05):
    """Runs `steps` train steps in graph mode, then the same steps XLA-compiled from the same state.

    The model's optimizers are replaced by plain SGD: Adam's first steps move every weight by
    about +-lr whatever the gradient's size, so a rounding-level gradient difference near zero
    becomes an lr-sized weight difference; SGD keeps the two runs' differences at rounding level.

    Returns:
      (graph_weights, xla_weights, initial_weights, graph_metrics, xla_metrics): lists of numpy
      arrays for every weight of the model, and the two runs' final metric dicts (floats).
    """
    names = model.optimizer_names
    model.compile(
        **{
            n: keras.optimizers.SGD(learning_rate)
            for n in names
            if n != "discriminator" or getattr(model, "discriminator", None) is not None
        }
    )
    model.build_optimizers()
    opts = [getattr(model, f"{n}_optimizer", None) for n in names]
    opts = [o for o in opts if o is not None]
    initial = [w.numpy() for w in model.weights]
    runs = []
    for jit in (False, True):
        for w, value in zip(model.weights, initial):
            w.assign(value)
        for o in opts:
            o.iterations.assign(0)
        for m in model.metrics:
            m.reset_state()
        step = tf.function(model.train_step, jit_compile=jit)
        for _ in range(steps):
            metrics = step(data)
        runs.append(([w.numpy() for w in model.weights], {k: float(v) for k, v in metrics.items()}))
    (graph_w, graph_m), (xla_w, xla_m) = runs
    return graph_w, xla_w, initial, graph_m, xla_m


def moved_fraction(weights, initial):
    """Fraction of the weight tensors that differ from their initial values."""
    return np.mean([not np.array_equal(a, b) for a, b in zip(weights, initial)])
