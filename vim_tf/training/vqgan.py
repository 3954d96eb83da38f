"""The GAN training procedure of the ViT-VQGAN tokenizer (the paper, Sec. 3.2)."""

import gin
import keras
import tensorflow as tf
from absl import logging
from keras import ops

from vim_tf.config import checks
from vim_tf.losses import adversarial, reconstruction
from vim_tf.models import quantizer as quantizer_lib
from vim_tf.models.discriminator import StyleGANDiscriminator
from vim_tf.training.procedure import TrainingProcedure, make_network
from vim_tf.utils import images as image_utils

_OWNER = "VQGANTraining"


def _loss_fn(fn_or_name, kind):
    """Accepts a loss function (as gin passes `@hinge_generator_loss`) or its name."""
    if callable(fn_or_name):
        return fn_or_name
    name = f"{fn_or_name}_{kind}_loss"
    fn = getattr(adversarial, name, None)
    if fn is None:
        raise ValueError(
            f"unknown {kind} loss {fn_or_name!r}: valid are 'non_saturating' and 'hinge' "
            f"(or a function such as @hinge_{kind}_loss)"
        )
    return fn


def _check_weights(values):
    for name, value in values.items():
        checks.check_float(_OWNER, name, value, low=0.0)


@gin.register
class VQGANTraining(TrainingProcedure):
    """Trains a tokenizer (`ViTVQGAN` or `CNNVQGAN`) as a GAN: reconstruction, VQ, perceptual
    and adversarial losses.

    Loss (the paper, Sec. 3.2): L = vq_weight * L_VQ + adversarial_weight * L_adv +
    perceptual_weight * L_perceptual + logit_laplace_weight * L_logit_laplace + l2_weight * L_2.

    Args:
      network: the tokenizer to train, or a callable that makes it (gin:
        `VQGANTraining.network = @ViTVQGAN` or `@CNNVQGAN`, whose bindings gin fills in).
      l2_weight, logit_laplace_weight, vq_weight, perceptual_weight, adversarial_weight: the loss
        weights (1.0, 0.1, 1.0, 0.1, 0.1 in the paper).
      perceptual_weights_path: a local VGG16 (no top) weights file; required when
        perceptual_weight > 0 (nothing is downloaded).
      discriminator: dict of `StyleGANDiscriminator` arguments, or None when adversarial_weight
        is 0.
      generator_loss, discriminator_loss: adversarial losses, a function or 'non_saturating' /
        'hinge'.
      r1_gamma, r1_interval: R1 penalty gamma/2 * E||grad D(x)||^2 on real images, applied every
        `r1_interval` discriminator steps (read from the discriminator optimizer's iterations)
        and scaled by the interval (lazy regularization).
      disc_start_step: generator step from which the discriminator trains and the adversarial
        term enters the generator loss.

    Compile: `compile(optimizer=generator_optimizer, discriminator_optimizer=...)`; the gin scopes
    'generator' and 'discriminator' of `make_optimizer` map to these keywords.
    """

    kind = "quantizer"
    optimizer_names = ("generator", "discriminator")
    optimizer_keywords = {"generator": "optimizer", "discriminator": "discriminator_optimizer"}

    def __init__(
        self,
        network=gin.REQUIRED,
        l2_weight=1.0,
        logit_laplace_weight=0.1,
        vq_weight=1.0,
        perceptual_weight=0.0,
        perceptual_weights_path=None,
        adversarial_weight=0.1,
        discriminator=None,
        generator_loss="non_saturating",
        discriminator_loss="non_saturating",
        r1_gamma=10.0,
        r1_interval=16,
        disc_start_step=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_weights(
            dict(
                l2_weight=l2_weight,
                logit_laplace_weight=logit_laplace_weight,
                vq_weight=vq_weight,
                perceptual_weight=perceptual_weight,
                adversarial_weight=adversarial_weight,
                r1_gamma=r1_gamma,
            )
        )
        checks.check_int(_OWNER, "r1_interval", r1_interval)
        checks.check_int(_OWNER, "disc_start_step", disc_start_step, minimum=0)
        self.l2_weight = float(l2_weight)
        self.logit_laplace_weight = float(logit_laplace_weight)
        self.vq_weight = float(vq_weight)
        self.perceptual_weight = float(perceptual_weight)
        self.perceptual_weights_path = perceptual_weights_path
        self.adversarial_weight = float(adversarial_weight)
        self.discriminator_config = dict(discriminator) if discriminator else None
        self.generator_loss_fn = _loss_fn(generator_loss, "generator")
        self.discriminator_loss_fn = _loss_fn(discriminator_loss, "discriminator")
        self.r1_gamma = float(r1_gamma)
        self.r1_interval = int(r1_interval)
        self.disc_start_step = int(disc_start_step)
        self.network = make_network(network, _OWNER)
        self.image_size = self.network.image_size
        self.discriminator = self._make_discriminator()
        self.perceptual = self._make_perceptual()
        # Which phase the next traced train step belongs to (the trainer retraces at
        # disc_start_step); a Python flag keeps the discriminator entirely out of the graph
        # before it starts.
        self.adversarial_active = self.discriminator is not None and self.disc_start_step <= 0
        self._trackers = {n: keras.metrics.Mean(name=n) for n in self._tracker_names()}

    def _make_discriminator(self):
        if self.adversarial_weight == 0:
            return None
        if self.discriminator_config is None:
            raise ValueError(
                f"{_OWNER}.adversarial_weight is {self.adversarial_weight} but no discriminator "
                f"is configured: set {_OWNER}.discriminator = {{...}} or adversarial_weight = 0"
            )
        return StyleGANDiscriminator(
            image_size=self.image_size, name="discriminator", **self.discriminator_config
        )

    def _make_perceptual(self):
        if self.perceptual_weight == 0:
            return None
        if not self.perceptual_weights_path:
            raise ValueError(
                f"{_OWNER}.perceptual_weight is {self.perceptual_weight} but "
                "perceptual_weights_path is not set: the perceptual loss needs local VGG16 "
                "weights (keras applications 'vgg16_weights_tf_dim_ordering_tf_kernels_notop"
                ".h5'); name the file or set perceptual_weight = 0"
            )
        from vim_tf.losses.perceptual import PerceptualLoss

        return PerceptualLoss(weights_path=self.perceptual_weights_path, name="perceptual")

    def _tracker_names(self):
        names = ["loss", "l2", "logit_laplace", "vq", "codebook_loss", "commitment_loss"]
        names += ["psnr", "batch_codebook_usage", "batch_perplexity"]
        if self.network.restart_dead_codes:
            names.append("restarted_codes")
        if self.perceptual is not None:
            names.append("perceptual")
        if self.discriminator is not None:
            names += ["generator_adversarial", "discriminator_loss", "r1_penalty"]
            names += ["logits_real", "logits_fake"]
        return names

    # ----------------------------------------------------------------- building
    def build(self, input_shape=None):
        self.network.build()
        if self.discriminator is not None:
            self.discriminator.build((None, self.image_size, self.image_size, 3))
        self.built = True

    def build_all(self):
        """Creates every variable (network, discriminator, perceptual net)."""
        self.build()
        if self.perceptual is not None:
            dummy = ops.zeros((1, self.image_size, self.image_size, 3))
            self.perceptual(dummy, dummy)

    def compile(self, optimizer=None, discriminator_optimizer=None, **kwargs):
        """Takes the generator's `optimizer` and the `discriminator_optimizer` (may be None
        without a discriminator)."""
        super().compile(optimizer=optimizer, **kwargs)
        self.discriminator_optimizer = (
            discriminator_optimizer if self.discriminator is not None else None
        )

    def build_optimizers(self):
        """Builds optimizer state (must run inside the distribution strategy's scope)."""
        self.optimizer.build(self.network.trainable_variables)
        if self.discriminator_optimizer is not None:
            self.discriminator_optimizer.build(self.discriminator.trainable_variables)

    def active_optimizer_names(self):
        return ["generator"] + (["discriminator"] if self.discriminator is not None else [])

    def named_optimizers(self):
        opts = {"generator": self.optimizer}
        if self.discriminator_optimizer is not None:
            opts["discriminator"] = self.discriminator_optimizer
        return opts

    def checkpoint_items(self):
        """The network under "model"; the discriminator and the optimizers under their own keys
        (the perceptual network's weights come from their file)."""
        items = super().checkpoint_items()
        if self.discriminator is not None:
            items["discriminator"] = self.discriminator
        return items

    def phase_boundaries(self):
        """Steps at which the train step changes shape (the trainer retraces there)."""
        return [self.disc_start_step] if self.discriminator is not None else []

    def set_phase(self, step):
        self.adversarial_active = self.discriminator is not None and step >= self.disc_start_step

    # ----------------------------------------------------------------- training
    def _generator_loss(self, images, out, adversarial_active):
        """The generator's total loss and its terms ({name: scalar})."""
        rec = out["reconstruction"]
        terms = {
            "l2": reconstruction.l2_loss(images, rec),
            "logit_laplace": reconstruction.logit_laplace_loss(
                images, out["loc"], out["log_scale"], self.network.eps
            ),
        }
        loss = (
            self.l2_weight * terms["l2"]
            + self.logit_laplace_weight * terms["logit_laplace"]
            + self.vq_weight * out["vq_loss"]
        )
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(images, rec)
            loss += self.perceptual_weight * terms["perceptual"]
        if adversarial_active:
            terms["generator_adversarial"] = self.generator_loss_fn(
                self.discriminator(rec, training=True)
            )
            loss += self.adversarial_weight * terms["generator_adversarial"]
        return loss, terms

    def train_step(self, data, summarize=True):
        """One generator step (and discriminator step once it started).

        Args:
          data: a batch, {'image': [B, H, W, 3] float in [0, 1], ...}.
          summarize: also track the statistics only logs need (PSNR, the batch's code usage
            and perplexity); the trainer asks for them on the last step of each loop only.

        Returns:
          {tracker name: mean so far}.
        """
        images = data["image"]
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        adversarial_active = self.adversarial_active
        step = tf.identity(self.optimizer.iterations)  # before this step's update
        with tf.GradientTape() as tape:
            out = self.network(images, training=True)
            loss, terms = self._generator_loss(images, out, adversarial_active)
            # Each replica's loss is a mean over its share of the global batch; gradients are
            # summed across replicas, so dividing by the replica count gives the global mean.
            # scale_loss: the loss scale of mixed_float16 (identity otherwise).
            scaled = self.optimizer.scale_loss(loss / replicas)
        ok = self.minimize(tape, scaled, loss, step=step)
        if self.network.restart_dead_codes:
            # Never re-seed codes from a step whose encoder outputs were not finite (a flag, not
            # a tf.cond: the restart gathers across replicas, which a branch may not hold).
            restarted = self.network.codebook.restart(
                out["z"], out["counts"], self.optimizer.iterations, enabled=ok
            )
            self.track(ok, restarted_codes=tf.cast(restarted, tf.float32))
        rec = out["reconstruction"]
        if summarize:
            self._track_codes(ok, out["counts"])
            self.track(ok, psnr=ops.mean(image_utils.psnr(images, rec)))
        self.track(
            ok,
            loss=loss,
            vq=out["vq_loss"],
            codebook_loss=out["codebook_loss"],
            commitment_loss=out["commitment_loss"],
            **terms,
        )
        if adversarial_active:
            self._discriminator_step(images, ops.stop_gradient(rec), replicas, step, ok)
        return {m.name: m.result() for m in self.metrics}

    def _track_codes(self, ok, counts):
        """Code statistics of the global batch (every replica's counts summed), so the logged
        usage and perplexity do not depend on how the batch is split across replicas."""
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            counts = ctx.all_reduce(tf.distribute.ReduceOp.SUM, counts)
        usage, perplexity = quantizer_lib.code_statistics(counts)
        self.track(ok, batch_codebook_usage=usage, batch_perplexity=perplexity)

    def _discriminator_step(self, real, fake, replicas, step, generator_ok):
        opt = self.discriminator_optimizer
        # Read once, before `apply` increments the counter: a later read would see the next step.
        r1_step = tf.equal(opt.iterations % self.r1_interval, 0)
        with tf.GradientTape() as tape:
            real_logits = self.discriminator(real, training=True)
            fake_logits = self.discriminator(fake, training=True)
            d_loss = self.discriminator_loss_fn(real_logits, fake_logits)
            total = d_loss
            if self.r1_gamma > 0:
                r1 = tf.cond(
                    r1_step,
                    lambda: tf.cast(adversarial.r1_penalty(self.discriminator, real), tf.float32),
                    lambda: tf.constant(0.0, tf.float32),
                )
                total += 0.5 * self.r1_gamma * self.r1_interval * r1
            scaled = opt.scale_loss(total / replicas)
        # A step counts as skipped once, even when both of its updates were.
        ok = self.minimize(
            tape,
            scaled,
            total,
            optimizer=opt,
            variables=self.discriminator.trainable_variables,
            step=step,
            count=generator_ok,
        )
        self.track(
            ok,
            discriminator_loss=d_loss,
            logits_real=ops.mean(real_logits),
            logits_fake=ops.mean(fake_logits),
        )
        if self.r1_gamma > 0:
            # Only the steps that computed R1 count toward its mean.
            self.track(tf.logical_and(ok, r1_step), r1_penalty=r1)

    # ----------------------------------------------------------------- reporting
    def summary_images(self, batch, max_images=8):
        """Traceable image summaries: {'reconstructions': ([2n, H, W, 3] float32 in [0, 1], 2)}.

        Inputs (first row) above their reconstructions (second row); the trainer runs this on a
        replica's device and lays the images out as a grid with the given number of rows.
        """
        images = batch["image"][:max_images]
        rec = self.network.reconstruct(images)
        return {"reconstructions": (ops.concatenate([ops.cast(images, "float32"), rec], 0), 2)}

    def model_info(self):
        """What a stage-2 prior needs to know about this tokenizer (written to the model dir)."""
        return dict(self.network.model_info(), kind=self.kind)

    def describe(self):
        """Log lines about choices a user should know about."""
        if self.perceptual is None:
            logging.info("perceptual loss off (perceptual_weight=0): no VGG16 weights given")
        if self.discriminator is None:
            logging.info("adversarial loss off (adversarial_weight=0)")
        else:
            logging.info("discriminator starts at step %d", self.disc_start_step)

    def get_config(self):
        config = super().get_config()
        config.update(
            l2_weight=self.l2_weight,
            logit_laplace_weight=self.logit_laplace_weight,
            vq_weight=self.vq_weight,
            perceptual_weight=self.perceptual_weight,
            perceptual_weights_path=self.perceptual_weights_path,
            adversarial_weight=self.adversarial_weight,
            discriminator=self.discriminator_config,
            generator_loss=self.generator_loss_fn.__name__.replace("_generator_loss", ""),
            discriminator_loss=self.discriminator_loss_fn.__name__.replace(
                "_discriminator_loss", ""
            ),
            r1_gamma=self.r1_gamma,
            r1_interval=self.r1_interval,
            disc_start_step=self.disc_start_step,
        )
        return config
