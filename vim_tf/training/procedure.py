"""The interface between a training procedure and the trainer.

A training procedure is a `keras.Model` with a custom `train_step` that holds what training
needs (networks, losses, optimizers, metric trackers). The trainer (`vim_tf.training.trainer`)
and `model.fit` drive it only through the methods below; the defaults suit a procedure with one
optimizer and one phase.
"""

import keras

from vim_tf.training import fit as fit_lib


class TrainingProcedure(keras.Model):
    """Base class of the quantizer, prior and classifier training procedures.

    Class attributes:
      kind: 'quantizer', 'prior' or 'classifier' (recorded in the model dir's model_info.json).
      optimizer_names: the gin scopes of `make_optimizer`, one per optimizer the procedure may
        use (`active_optimizer_names` lists those this configuration needs).
    """

    kind = None
    optimizer_names = ()

    def active_optimizer_names(self):
        """The optimizers this configuration uses (a subset of `optimizer_names`, same order)."""
        return list(self.optimizer_names)

    def compile_optimizers(self, optimizers, **kwargs):
        """`compile` with {optimizer name: optimizer} for every active optimizer name."""
        self.compile(**optimizers, **kwargs)

    def build_all(self):
        """Creates every variable of the procedure (networks, losses' networks, trackers)."""
        self.build()

    def build_optimizers(self):
        """Creates the optimizers' state (call inside the distribution strategy's scope)."""
        raise NotImplementedError(f"{type(self).__name__} must define build_optimizers")

    def checkpoint_items(self):
        """{name: trackable} saved in every checkpoint."""
        raise NotImplementedError(f"{type(self).__name__} must define checkpoint_items")

    def named_optimizers(self):
        """{optimizer name: optimizer} for the active optimizers (after compile)."""
        raise NotImplementedError(f"{type(self).__name__} must define named_optimizers")

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
