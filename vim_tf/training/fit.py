"""Keras `fit()` for the training procedures: phase switches, XLA per phase, the non-finite guard.

A procedure's train step changes shape at its phase boundaries (the quantizer's discriminator
enters at `disc_start_step`, as a Python flag read when the step is traced, so no part of it
is in the graph before). The production trainer retraces there; under `model.fit` the
`TrainingPhases` callback, which `TrainingProcedure.fit` adds first to every fit, does the same:
before each execution of `steps_per_execution` steps that could reach a boundary it reads the
step counter, calls `model.set_phase(step)` and rebuilds the train function when the phase
changed. A boundary inside an execution cannot be honoured (the execution is one traced call):
fit raises a ValueError naming the boundary and `steps_per_execution` before it runs that
execution.

XLA: `compile(jit_compile=...)` is honoured as Keras does; `jit_compile='except_adversarial'`
compiles the phases without the discriminator only (as `train.jit_compile` does).

Non-finite steps: fit attaches the non-finite guard when the model has none (the trainer's
`build_model` attaches it) and runs it in 'skip' mode: an update whose loss or gradient is
non-finite on any replica is never applied, the skipped steps are counted in
`guard.state_of(model).skipped` (they do not advance `model.step`), the metric trackers leave
them out, and fit logs a warning at the end of each epoch that skipped steps.
"""

import keras
from absl import logging

from vim_tf.training import guard

# Values of `train.jit_compile` and of `compile(jit_compile=...)` for a procedure under fit: no
# XLA, XLA for every step, XLA while the discriminator is off.
JIT_MODES = (False, True, "except_adversarial")


def uses_xla(jit_compile, model):
    """Whether the model's current phase runs XLA-compiled under `jit_compile` (a JIT_MODES
    value; 'except_adversarial': XLA unless `model.adversarial_active`)."""
    if jit_compile == "except_adversarial":
        return not model.adversarial_active
    return bool(jit_compile)


class TrainingPhases(keras.callbacks.Callback):
    """Keeps a procedure's traced train step in the phase of its step counter under `fit`.

    Reads the step counter (a host read) only before executions that could reach the next
    phase boundary; steps skipped by the non-finite guard do not advance the counter, so the
    boundary is found where the production trainer finds it.
    """

    def __init__(self):
        super().__init__()
        self._mode = None  # the compile-time jit_compile (`fit` restores it at the end)
        self._phase = None
        self._known = 0  # the step counter when it was last read
        self._bound = 0  # an upper bound on the step counter before the next execution

    def _execution_steps(self):
        return int(getattr(self.model, "steps_per_execution", 1) or 1)

    def _boundaries(self):
        return sorted(int(b) for b in self.model.phase_boundaries() if b > 0)

    def on_train_begin(self, logs=None):
        mode = self.model.jit_compile
        if mode not in JIT_MODES:
            raise ValueError(
                f"{type(self.model).__name__}.compile(jit_compile=...) must be one of "
                f"{list(JIT_MODES)} or 'auto' for fit, got {mode!r}"
            )
        self._mode, self._phase = mode, None
        step = int(self.model.step.numpy())
        self._check_static_alignment(step)
        self._select(step)

    def on_train_batch_begin(self, batch, logs=None):
        k = self._execution_steps()
        pending = [b for b in self._boundaries() if b > self._known]
        if not pending or self._bound + k <= pending[0]:
            self._bound += k  # this execution cannot cross a boundary: no host read
            return
        step = int(self.model.step.numpy())
        self._select(step)
        self._check_inside(step, k)
        self._bound = step + k

    def _select(self, step):
        """Sets the phase of `step`; rebuilds the train function when it changed."""
        self._known = self._bound = step
        phase = sum(step >= b for b in self._boundaries())
        if phase == self._phase:
            return
        self.model.set_phase(step)
        self.model.jit_compile = uses_xla(self._mode, self.model)
        self.model.make_train_function(force=True)
        self._phase = phase
        logging.info(
            "fit: train step from step %d: %s",
            step,
            "XLA-compiled" if self.model.jit_compile else "graph mode (no XLA)",
        )

    def _error(self, boundary, k, start):
        return ValueError(
            f"{type(self.model).__name__} changes its train step at step {boundary} (a phase "
            f"boundary, e.g. the quantizer's disc_start_step), which falls inside an execution "
            f"of steps_per_execution={k} steps starting at step {start}: fit cannot switch "
            f"phase inside one execution. Use a steps_per_execution that divides "
            f"{boundary - start} (the steps to the boundary), e.g. 1"
        )

    def _check_static_alignment(self, start):
        """Before training: every boundary this fit reaches starts an execution."""
        k = self._execution_steps()
        total = (self.params or {}).get("epochs", 1) * ((self.params or {}).get("steps") or 0)
        for b in self._boundaries():
            if start < b < start + total and (b - start) % k:
                raise self._error(b, k, start)

    def _check_inside(self, step, k):
        """Before an execution from `step`: no boundary may fall strictly inside it."""
        for b in self._boundaries():
            if step < b < step + k:
                raise self._error(b, k, step)


class NonFiniteSteps(keras.callbacks.Callback):
    """Logs, at the end of each epoch, the steps the non-finite guard skipped in it."""

    def __init__(self):
        super().__init__()
        self._seen = 0

    def on_train_begin(self, logs=None):
        self._seen = int(guard.state_of(self.model).skipped.numpy())

    def on_epoch_end(self, epoch, logs=None):
        state = guard.state_of(self.model)
        skipped = int(state.skipped.numpy())
        if skipped > self._seen:
            logging.warning(
                "fit epoch %d: skipped %d step(s) with a non-finite loss or gradient (first at "
                "step %d; %d in all); their updates were not applied",
                epoch,
                skipped - self._seen,
                int(state.first_step.numpy()) + 1,
                skipped,
            )
            self._seen = skipped
            state.first_step.assign(-1)


def prepare(model):
    """Attaches the non-finite guard in 'skip' mode (inside the model's strategy scope)."""
    state = guard.state_of(model)
    if state is None:
        with model.distribute_strategy.scope():
            state = guard.attach(model)
    state.halt_after_skip = False


def with_callbacks(model, callbacks):
    """`callbacks` (None, a list or a keras CallbackList) with TrainingPhases first and
    NonFiniteSteps added."""
    ours = [TrainingPhases(), NonFiniteSteps()]
    if isinstance(callbacks, keras.callbacks.CallbackList):
        for callback in ours:
            callback.set_model(model)
        callbacks.callbacks[:0] = ours
        return callbacks
    return ours + list(callbacks or [])


# keras.Model.fit's positional parameters before `callbacks` (x, y, batch_size, epochs, verbose).
_CALLBACKS_POSITION = 5


def fit(model, keras_fit, args, kwargs):
    """Runs `keras_fit(*args, **kwargs)` (the Keras `fit` of `model`) with the phase switches
    and the guard (see the module docstring); returns its History."""
    prepare(model)
    args = list(args)
    if len(args) > _CALLBACKS_POSITION:
        args[_CALLBACKS_POSITION] = with_callbacks(model, args[_CALLBACKS_POSITION])
    else:
        kwargs = dict(kwargs, callbacks=with_callbacks(model, kwargs.get("callbacks")))
    mode = model.jit_compile
    try:
        return keras_fit(*args, **kwargs)
    finally:
        # TrainingPhases sets jit_compile per phase; the next fit traces afresh from its own
        # starting phase.
        model.jit_compile = mode
        model.train_function = None
