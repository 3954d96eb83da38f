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
    names = model.active_optimizer_names()
    model.compile_optimizers({n: keras.optimizers.SGD(learning_rate) for n in names})
    model.build_optimizers()
    opts = list(model.named_optimizers().values())
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


def assert_same_updates(test, model, data, trained=None):
    """Asserts (on `test`, a tf.test.TestCase) that graph and XLA steps give the same weights and
    metrics, and that most of the `trained` variables (default: every weight) moved."""
    graph, xla, initial, graph_m, xla_m = graph_and_xla_updates(model, data)
    trained = {id(v) for v in (model.weights if trained is None else trained)}
    pick = [i for i, w in enumerate(model.weights) if id(w) in trained]
    test.assertGreater(moved_fraction([xla[i] for i in pick], [initial[i] for i in pick]), 0.9)
    for w, a, b in zip(model.weights, graph, xla):
        test.assertAllClose(a, b, rtol=1e-4, atol=1e-6, msg=w.path)
    test.assertEqual(graph_m.keys(), xla_m.keys())
    for k in graph_m:
        test.assertAllClose(graph_m[k], xla_m[k], rtol=1e-4, atol=1e-6, msg=k)


def moved_fraction(weights, initial):
    """Fraction of the weight tensors that differ from their initial values."""
    return np.mean([not np.array_equal(a, b) for a, b in zip(weights, initial)])
