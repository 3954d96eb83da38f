"""Learning-rate schedules and optimizers, all selected and sized from gin.

Bind with scopes when one model trains two networks, e.g.
`generator/make_optimizer.beta_2 = 0.99` and `discriminator/make_optimizer.beta_2 = 0.99`.
"""

import math

import gin
import keras
import tensorflow as tf

from vim_tf.training import precision

_NO_DECAY = ("bias", "gamma", "beta", "codebook", "embedding", "posemb", "scale")


@keras.saving.register_keras_serializable(package="vim_tf")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then cosine decay to `final` at
    `decay_steps` (held at `final` afterwards). Stage 1 of the paper: peak 1e-4, warm-up 50k,
    final 5e-5 at 500k."""

    def __init__(self, peak, warmup_steps, decay_steps, final=0.0):
        if peak <= 0 or final < 0:
            raise ValueError(f"learning rates must be peak > 0, final >= 0; got {peak}, {final}")
        if warmup_steps < 0 or decay_steps < warmup_steps:
            # Named as gin bindings: the experiments tie decay_steps to TRAIN_STEPS, so a short
            # run that only lowers TRAIN_STEPS lands here.
            raise ValueError(
                f"need 0 <= warmup_steps <= decay_steps, got {warmup_steps}, {decay_steps}: "
                f"bind WarmupCosine.warmup_steps to at most {max(decay_steps, 0)} or raise "
                "WarmupCosine.decay_steps (TRAIN_STEPS in the experiments)"
            )
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = int(decay_steps)
        self.final = float(final)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * step / max(self.warmup_steps, 1)
        span = max(self.decay_steps - self.warmup_steps, 1)
        progress = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
        cosine = self.final + 0.5 * (self.peak - self.final) * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup_steps, warm, cosine)

    def get_config(self):
        return dict(
            peak=self.peak,
            warmup_steps=self.warmup_steps,
            decay_steps=self.decay_steps,
            final=self.final,
        )


@keras.saving.register_keras_serializable(package="vim_tf")
class WarmupHoldExponential(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, held until `decay_start`, then exponential decay reaching `final`
    at `decay_end` (held afterwards). Stage 2 of the paper: peak 4.5e-4, warm-up 5k, decay from
    80k to 1e-5 at the end of training."""

    def __init__(self, peak, warmup_steps, decay_start, decay_end, final):
        if not 0 < final <= peak:
            raise ValueError(f"need 0 < final <= peak, got final={final}, peak={peak}")
        if not 0 <= warmup_steps <= decay_start <= decay_end:
            raise ValueError(
                "need 0 <= warmup_steps <= decay_start <= decay_end, got "
                f"{warmup_steps}, {decay_start}, {decay_end}: bind "
                "WarmupHoldExponential.warmup_steps / .decay_start within "
                "WarmupHoldExponential.decay_end (TRAIN_STEPS in the experiments)"
            )
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.decay_start = int(decay_start)
        self.decay_end = int(decay_end)
        self.final = float(final)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * step / max(self.warmup_steps, 1)
        span = max(self.decay_end - self.decay_start, 1)
        progress = tf.clip_by_value((step - self.decay_start) / span, 0.0, 1.0)
        decayed = self.peak * tf.pow(self.final / self.peak, progress)
        return tf.where(step < self.warmup_steps, warm, decayed)

    def get_config(self):
        return dict(
            peak=self.peak,
            warmup_steps=self.warmup_steps,
            decay_start=self.decay_start,
            decay_end=self.decay_end,
            final=self.final,
        )


gin.external_configurable(WarmupCosine, module="vim_tf")
gin.external_configurable(WarmupHoldExponential, module="vim_tf")


@gin.configurable
def make_optimizer(
    learning_rate=gin.REQUIRED,
    beta_1=0.9,
    beta_2=0.99,
    weight_decay=1e-4,
    epsilon=1e-8,
    clipnorm=None,
    exclude_from_weight_decay=_NO_DECAY,
):
    """Adam with decoupled weight decay (AdamW); Adam when weight_decay is 0.

    Keras applies decoupled decay as `w -= lr * weight_decay * w`. Biases, normalization scales,
    codebooks, embeddings and positional embeddings are excluded from decay by default (decaying
    the l2-normalized codebook would only shrink vectors whose length does not matter).

    Under the 'mixed_float16' dtype policy (`precision.set_precision`) the optimizer comes wrapped
    in a `keras.optimizers.LossScaleOptimizer`.

    Args:
      learning_rate: a float or a schedule (e.g. `@WarmupCosine()`).
    """
    if beta_1 < 0 or beta_1 >= 1 or beta_2 < 0 or beta_2 >= 1:
        raise ValueError(f"beta_1 and beta_2 must be in [0, 1), got {beta_1}, {beta_2}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    kwargs = dict(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)
    if clipnorm:
        kwargs["clipnorm"] = clipnorm
    if weight_decay > 0:
        opt = keras.optimizers.AdamW(weight_decay=weight_decay, **kwargs)
        opt.exclude_from_weight_decay(var_names=list(exclude_from_weight_decay))
    else:
        opt = keras.optimizers.Adam(**kwargs)
    if precision.needs_loss_scaling():
        # float16 gradients underflow: dynamic loss scaling (the train steps multiply their loss
        # by `optimizer.scale_loss`, `apply` unscales and skips steps with non-finite gradients).
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def make_scoped_optimizer(scope):
    """`make_optimizer()` with the bindings of gin scope `scope` (e.g. 'generator')."""
    with gin.config_scope(scope):
        return make_optimizer()
