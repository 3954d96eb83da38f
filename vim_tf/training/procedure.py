"""The interface between a training procedure and the trainer.

A training procedure is a `keras.Model` with a custom `train_step` that holds what training
needs (the inference network it trains, losses, optimizers, metric trackers). The trainer
(`vim_tf.training.trainer`) and `model.fit` drive it only through the methods below; the defaults
suit a procedure with one optimizer (`compile(optimizer=...)`) and one phase.

Checkpoints hold the inference network under the key "model" and training-only objects under
their own keys, so `tf.train.Checkpoint(model=network)` restores a network for inference without
building anything of training (`vim_tf.models.loading`).
"""

import keras

from vim_tf.training import fit as fit_lib
from vim_tf.training import guard


def make_network(network, owner):
    """`network` itself if it is a built-or-unbuilt Keras model, else `network()` (a class or a
    gin reference such as `@ViTVQGAN`, whose bound parameters gin fills in)."""
    if network is None or not callable(network):
        raise ValueError(
            f"{owner}.network must be a network class or instance (e.g. "
            f"{owner}.network = @ViTVQGAN in gin), got {network!r}"
        )
    return network if isinstance(network, keras.Model) else network()


class TrainingProcedure(keras.Model):
    """Base class of the quantizer, prior and classifier training procedures.

    Class attributes:
      kind: 'quantizer', 'prior' or 'classifier' (recorded in the model dir's model_info.json).
      optimizer_names: the gin scopes of `make_optimizer`, one per optimizer the procedure may
        use (`active_optimizer_names` lists those this configuration needs).
      optimizer_keywords: {optimizer name: `compile` keyword}; the first optimizer is compile's
        standard `optimizer=`, so Keras creates no default optimizer of its own.

    Attributes:
      network: the inference network being trained (saved under the checkpoint key "model").
    """

    kind = None
    optimizer_names = ()
    optimizer_keywords = {}

    def active_optimizer_names(self):
        """The optimizers this configuration uses (a subset of `optimizer_names`, same order)."""
        return list(self.optimizer_names)

    def _keyword(self, name):
        if name in self.optimizer_keywords:
            return self.optimizer_keywords[name]
        if name == self.optimizer_names[0]:
            return "optimizer"
        raise ValueError(
            f"{type(self).__name__} has no optimizer named {name!r}: valid are "
            f"{list(self.optimizer_names)}"
        )

    def compile_optimizers(self, optimizers, **kwargs):
        """`compile` with {optimizer name (gin scope): optimizer} for every active optimizer."""
        self.compile(**{self._keyword(n): opt for n, opt in optimizers.items()}, **kwargs)

    def compile(self, optimizer=None, **kwargs):
        """Keras `compile`; `optimizer` is the (first) optimizer, required to train."""
        super().compile(optimizer=optimizer, **kwargs)

    def build(self, input_shape=None):
        """Builds the network (procedures with more networks extend this)."""
        self.network.build()
        self.built = True

    def get_config(self):
        """Keras config: subclasses add their arguments; `network` is serialized here."""
        config = super().get_config()
        config["network"] = keras.saving.serialize_keras_object(self.network)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)

    def build_all(self):
        """Creates every variable of the procedure (networks, losses' networks, trackers)."""
        self.build()

    def build_optimizers(self):
        """Creates the optimizers' state (call inside the distribution strategy's scope)."""
        self.optimizer.build(self.network.trainable_variables)

    def checkpoint_items(self):
        """{name: trackable} saved in every checkpoint: the network under "model", then each
        optimizer under "<name>_optimizer"."""
        items = {"model": self.network}
        items.update((f"{n}_optimizer", opt) for n, opt in self.named_optimizers().items())
        return items

    def named_optimizers(self):
        """{optimizer name: optimizer} for the active optimizers (after compile)."""
        return {self.optimizer_names[0]: self.optimizer}

    def network_config(self):
        """The inference network's Keras config (written to the model dir's model_config.json,
        from which `vim_tf.models.loading` rebuilds the network)."""
        return self.network.get_config()

    def train_step(self, data, summarize=True):
        """One training step on a batch; returns {tracker name: mean so far}.

        `summarize=False` leaves out the trackers that cost extra work and only logs read
        (PSNR, code statistics, accuracies): the trainer runs the steps of a loop without them
        and the loop's last step with them, so those logged means average one step per loop.
        Loss terms are tracked on every step. Keras `fit` calls `train_step(data)`.
        """
        raise NotImplementedError

    def call(self, *args, **kwargs):
        """The network's forward pass."""
        return self.network(*args, **kwargs)

    @property
    def metrics(self):
        """The `keras.metrics.Mean` trackers (`self._trackers`, made in the constructor: Keras
        refuses new state once a layer is built)."""
        return list(self._trackers.values())

    def track(self, ok, **values):
        """Updates trackers from a step whose update was applied (`ok`); skipped steps stay out."""
        for name, value in values.items():
            guard.track(self._trackers[name], value, ok)

    def minimize(self, tape, scaled_loss, loss, optimizer=None, variables=None, **kwargs):
        """Applies the gradients of `scaled_loss` when they and `loss` are finite (see
        `guard.apply_if_finite`); returns whether the update was applied (bool tensor).

        Defaults: the first optimizer and the network's trainable variables.
        """
        optimizer = optimizer or self.optimizer
        variables = self.network.trainable_variables if variables is None else variables
        grads = tape.gradient(scaled_loss, variables)
        return guard.apply_if_finite(self, optimizer, grads, variables, loss, **kwargs)

    @property
    def step(self):
        """The training step counter (a variable): applied updates of the first optimizer."""
        return self.named_optimizers()[self.active_optimizer_names()[0]].iterations

    def phase_boundaries(self):
        """Steps at which `train_step` changes shape (the trainer retraces there)."""
        return []

    def set_phase(self, step):
        """Selects the phase that `step` belongs to (before the train step is traced again)."""
        del step

    # Whether the current phase trains a discriminator (`train.jit_compile='except_adversarial'`
    # runs such phases without XLA); procedures with a discriminator set it in `set_phase`.
    adversarial_active = False

    def summary_images(self, batch):
        """Traceable image summaries: {name: (images [n, H, W, 3] float32 in [0, 1], rows)}."""
        del batch
        return {}

    def model_info(self):
        """What is written to the model dir's model_info.json."""
        return {"kind": self.kind}

    def describe(self):
        """Logs the choices a user should know about (losses off, phase starts)."""

    def fit(self, *args, **kwargs):
        """Keras `fit`, switching the train step's phase at `phase_boundaries()` as the trainer
        does, with the non-finite guard in 'skip' mode (see `vim_tf.training.fit`)."""
        return fit_lib.fit(self, super().fit, args, kwargs)
