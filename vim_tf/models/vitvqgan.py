"""ViT-VQGAN: the stage-1 image quantizer and its GAN training step (PAPER.md, stage 1)."""

import gin
import keras
import tensorflow as tf
from absl import logging
from keras import ops

from vim_tf.config import checks
from vim_tf.losses import adversarial, reconstruction
from vim_tf.models import quantizer as quantizer_lib
from vim_tf.models.discriminator import StyleGANDiscriminator
from vim_tf.models.vit import ViTDecoder, ViTEncoder
from vim_tf.training import guard
from vim_tf.training.procedure import TrainingProcedure
from vim_tf.utils import images as image_utils
from vim_tf.utils import model_dir as model_dir_lib

_STACK_KEYS = ("num_layers", "num_heads", "hidden_dim", "mlp_dim")


def _check_stack(name, cfg):
    missing = [k for k in _STACK_KEYS if k not in cfg]
    unknown = [k for k in cfg if k not in _STACK_KEYS + ("dropout",)]
    if missing or unknown:
        raise ValueError(
            f"ViTVQGAN.{name} must be a dict with keys {list(_STACK_KEYS)} (and optionally "
            f"'dropout'); missing {missing}, unknown {unknown} in {cfg!r}"
        )
    owner = f"ViTVQGAN.{name}"
    for k in _STACK_KEYS:
        checks.check_int(owner, f"['{k}']", cfg[k])
    checks.check_heads(
        owner, cfg["num_heads"], cfg["hidden_dim"], "['num_heads']", "['hidden_dim']"
    )
    if cfg["hidden_dim"] % 4:
        raise ValueError(
            f"{owner}['hidden_dim']={cfg['hidden_dim']} is not a multiple of 4 (the 2-D sin-cos "
            "positional embedding gives a quarter of the width to each of sin/cos x rows/columns)"
        )
    if "dropout" in cfg:
        checks.check_float(owner, "['dropout']", cfg["dropout"], 0.0, 1.0, high_open=True)
    return dict(cfg)


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


@gin.register
class ViTVQGAN(TrainingProcedure):
    """ViT encoder -> factorized l2-normalized quantizer -> ViT decoder, trained as a GAN.

    Loss (PAPER.md): L = vq_weight * L_VQ + adversarial_weight * L_adv + perceptual_weight *
    L_perceptual + logit_laplace_weight * L_logit_laplace + l2_weight * L_2.

    Args:
      image_size, patch_size: square images and patches; the token grid is image_size/patch_size.
      encoder, decoder: dicts with num_layers, num_heads, hidden_dim, mlp_dim (PAPER.md table).
      codebook_size, code_dim, beta, l2_normalize: the quantizer (8192, 32, 0.25, True).
      restart_dead_codes: re-seed unused codes from encoder outputs (not in the paper; see
        `VectorQuantizer`).
      eps: the logit-laplace pixel squeeze (0.1).
      min_log_scale: soft lower bound on the logit-laplace log-scale; without it the likelihood of
        saturated pixels (digit backgrounds are exactly 0) grows without bound as b -> 0.
      l2_weight, logit_laplace_weight, vq_weight, perceptual_weight, adversarial_weight: the loss
        weights (1.0, 0.1, 1.0, 0.1, 0.1 in the paper).
      perceptual_weights_path: a local VGG16 (no top) weights file; required when
        perceptual_weight > 0 (nothing is downloaded).
      discriminator: dict of `StyleGANDiscriminator` arguments, or None when adversarial_weight
        is 0.
      generator_loss, discriminator_loss: adversarial losses, a function or 'non_saturating' /
        'hinge'.
      r1_gamma, r1_interval: R1 penalty gamma/2 * E||grad D(x)||^2 on real images, applied every
        `r1_interval` discriminator steps and scaled by the interval (lazy regularization).
      disc_start_step: generator step from which the discriminator trains and the adversarial
        term enters the generator loss.

    Call: `images: [B, H, W, 3] float in [0, 1] -> dict` with `reconstruction` [B,H,W,3] in
    [0,1], `loc`/`log_scale` [B,H,W,3], `indices` int32 [B,h,w] and the quantizer's losses.
    """

    kind = "quantizer"
    optimizer_names = ("generator", "discriminator")

    def __init__(
        self,
        image_size=gin.REQUIRED,
        patch_size=8,
        encoder=gin.REQUIRED,
        decoder=gin.REQUIRED,
        codebook_size=8192,
        code_dim=32,
        beta=0.25,
        l2_normalize=True,
        restart_dead_codes=False,
        eps=0.1,
        min_log_scale=-5.0,
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
        for name, value in (
            ("l2_weight", l2_weight),
            ("logit_laplace_weight", logit_laplace_weight),
            ("vq_weight", vq_weight),
            ("perceptual_weight", perceptual_weight),
            ("adversarial_weight", adversarial_weight),
            ("r1_gamma", r1_gamma),
            ("beta", beta),
        ):
            checks.check_float("ViTVQGAN", name, value, low=0.0)
        checks.check_int("ViTVQGAN", "r1_interval", r1_interval)
        checks.check_int("ViTVQGAN", "disc_start_step", disc_start_step, minimum=0)
        checks.check_float("ViTVQGAN", "eps", eps, 0.0, 0.5, low_open=True, high_open=True)
        checks.check_float("ViTVQGAN", "min_log_scale", min_log_scale)
        checks.check_int("ViTVQGAN", "image_size", image_size)
        checks.check_int("ViTVQGAN", "patch_size", patch_size)
        if image_size % patch_size:
            below = image_size // patch_size * patch_size
            nearest = [n for n in (below, below + patch_size) if n > 0]
            raise ValueError(
                f"ViTVQGAN.image_size={image_size} is not divisible by ViTVQGAN.patch_size="
                f"{patch_size}: use an image size that is a multiple of the patch size (e.g. "
                f"{' or '.join(map(str, nearest))})"
            )
        checks.check_int("ViTVQGAN", "codebook_size", codebook_size, hint=" (8192 in the paper)")
        checks.check_int("ViTVQGAN", "code_dim", code_dim, hint=" (32 in the paper)")
        self.image_size = int(image_size)
        self.patch_size = int(patch_size)
        self.encoder_config = _check_stack("encoder", encoder)
        self.decoder_config = _check_stack("decoder", decoder)
        self.codebook_size = int(codebook_size)
        self.code_dim = int(code_dim)
        self.beta = float(beta)
        self.l2_normalize = bool(l2_normalize)
        self.restart_dead_codes = bool(restart_dead_codes)
        self.eps = float(eps)
        self.min_log_scale = float(min_log_scale)
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

        self.encoder = ViTEncoder(image_size, patch_size, name="encoder", **self.encoder_config)
        self.grid_size = self.encoder.grid_size
        self.quantizer = quantizer_lib.VectorQuantizer(
            codebook_size,
            code_dim,
            self.decoder_config["hidden_dim"],
            beta=beta,
            l2_normalize=l2_normalize,
            restart_dead_codes=restart_dead_codes,
            name="quantizer",
        )
        self.decoder = ViTDecoder(image_size, patch_size, name="decoder", **self.decoder_config)

        if self.adversarial_weight > 0:
            if self.discriminator_config is None:
                raise ValueError(
                    f"ViTVQGAN.adversarial_weight is {adversarial_weight} but no discriminator is "
                    "configured: set ViTVQGAN.discriminator = {...} or adversarial_weight = 0"
                )
            self.discriminator = StyleGANDiscriminator(
                image_size=image_size, name="discriminator", **self.discriminator_config
            )
        else:
            self.discriminator = None
        if self.perceptual_weight > 0:
            if not perceptual_weights_path:
                raise ValueError(
                    f"ViTVQGAN.perceptual_weight is {perceptual_weight} but "
                    "perceptual_weights_path is not set: the perceptual loss needs local VGG16 "
                    "weights (keras applications 'vgg16_weights_tf_dim_ordering_tf_kernels_notop"
                    ".h5'); name the file or set perceptual_weight = 0"
                )
            from vim_tf.losses.perceptual import PerceptualLoss

            self.perceptual = PerceptualLoss(
                weights_path=perceptual_weights_path, name="perceptual"
            )
        else:
            self.perceptual = None
        # Which phase the next traced train step belongs to (the trainer retraces at
        # disc_start_step); a Python flag keeps the discriminator entirely out of the graph
        # before it starts.
        self.adversarial_active = self.discriminator is not None and self.disc_start_step <= 0
        # Metric trackers exist from construction: Keras refuses new state once a layer is built.
        names = [
            "loss",
            "l2",
            "logit_laplace",
            "vq",
            "codebook_loss",
            "commitment_loss",
            "psnr",
            "batch_codebook_usage",
            "batch_perplexity",
        ]
        if self.restart_dead_codes:
            names.append("restarted_codes")
        if self.perceptual is not None:
            names.append("perceptual")
        if self.discriminator is not None:
            names += [
                "generator_adversarial",
                "discriminator_loss",
                "r1_penalty",
                "logits_real",
                "logits_fake",
            ]
        self._trackers = {n: keras.metrics.Mean(name=n) for n in names}

    # ----------------------------------------------------------------- inference
    def _distribution(self, codes, training=None):
        out = ops.cast(self.decoder(codes, training=training), "float32")
        # A split, not two slices: its gradient is one concat instead of two zero-padded copies.
        loc, raw_log_scale = ops.split(out, 2, axis=-1)
        # Soft lower bound: min + softplus(raw - min) ~ raw above the bound, keeps gradients.
        log_scale = self.min_log_scale + ops.softplus(raw_log_scale - self.min_log_scale)
        return loc, log_scale

    def call(self, images, training=None):
        q = self.quantizer(self.encoder(images, training=training))
        loc, log_scale = self._distribution(q["codes"], training=training)
        out = dict(q)
        out.update(
            loc=loc,
            log_scale=log_scale,
            reconstruction=reconstruction.logit_laplace_mean(loc, self.eps),
            indices=ops.reshape(q["indices"], (-1, self.grid_size, self.grid_size)),
        )
        return out

    def encode(self, images):
        """images [B, H, W, 3] in [0, 1] -> token ids int32 [B, h, w]."""
        _, idx = self.quantizer.lookup(self.encoder(images, training=False))
        return ops.reshape(idx, (-1, self.grid_size, self.grid_size))

    def decode(self, indices):
        """token ids [B, h, w] -> images float32 [B, H, W, 3] in [0, 1]."""
        flat = ops.reshape(indices, (-1, self.grid_size * self.grid_size))
        loc, _ = self._distribution(self.quantizer.embed(flat), training=False)
        return reconstruction.logit_laplace_mean(loc, self.eps)

    def reconstruct(self, images):
        return self.decode(self.encode(images))

    # ----------------------------------------------------------------- training
    @property
    def generator_variables(self):
        return (
            self.encoder.trainable_variables
            + self.quantizer.trainable_variables
            + self.decoder.trainable_variables
        )

    def build(self, input_shape=None):
        image_shape = (None, self.image_size, self.image_size, 3)
        tokens = (None, self.grid_size**2)
        self.encoder.build(image_shape)
        self.quantizer.build(tokens + (self.encoder_config["hidden_dim"],))
        self.decoder.build(tokens + (self.decoder_config["hidden_dim"],))
        if self.discriminator is not None:
            self.discriminator.build(image_shape)
        self.built = True

    def build_all(self):
        """Creates every variable (model, discriminator, perceptual net)."""
        self.build()
        if self.perceptual is not None:
            dummy = ops.zeros((1, self.image_size, self.image_size, 3))
            self.perceptual(dummy, dummy)

    def compile(self, generator=None, discriminator=None, **kwargs):
        """Takes both optimizers; `discriminator` may be None without a discriminator."""
        super().compile(**kwargs)
        self.generator_optimizer = generator
        self.discriminator_optimizer = discriminator if self.discriminator is not None else None

    def build_optimizers(self):
        """Builds optimizer state (must run inside the distribution strategy's scope)."""
        self.generator_optimizer.build(self.generator_variables)
        if self.discriminator_optimizer is not None:
            self.discriminator_optimizer.build(self.discriminator.trainable_variables)

    def active_optimizer_names(self):
        return ["generator"] + (["discriminator"] if self.discriminator is not None else [])

    def named_optimizers(self):
        opts = {"generator": self.generator_optimizer}
        if self.discriminator_optimizer is not None:
            opts["discriminator"] = self.discriminator_optimizer
        return opts

    def checkpoint_items(self):
        items = {"model": self, "generator_optimizer": self.generator_optimizer}
        if self.discriminator_optimizer is not None:
            items["discriminator_optimizer"] = self.discriminator_optimizer
        return items

    @property
    def step(self):
        return self.generator_optimizer.iterations

    def phase_boundaries(self):
        """Steps at which the train step changes shape (the trainer retraces there)."""
        return [self.disc_start_step] if self.discriminator is not None else []

    def set_phase(self, step):
        self.adversarial_active = self.discriminator is not None and step >= self.disc_start_step

    @property
    def metrics(self):
        return list(self._trackers.values())

    def _track(self, ok, **values):
        """Updates trackers from a step whose update was applied (`ok`); skipped steps stay out."""
        for k, v in values.items():
            guard.track(self._trackers[k], v, ok)

    def train_step(self, data):
        images = data["image"]
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        adversarial_active = self.adversarial_active
        step = tf.identity(self.generator_optimizer.iterations)  # before this step's update
        with tf.GradientTape() as tape:
            out = self(images, training=True)
            rec = out["reconstruction"]
            l2 = reconstruction.l2_loss(images, rec)
            ll = reconstruction.logit_laplace_loss(images, out["loc"], out["log_scale"], self.eps)
            loss = (
                self.l2_weight * l2
                + self.logit_laplace_weight * ll
                + self.vq_weight * out["vq_loss"]
            )
            if self.perceptual is not None:
                perceptual = self.perceptual(images, rec)
                loss += self.perceptual_weight * perceptual
            if adversarial_active:
                fake_logits = self.discriminator(rec, training=True)
                g_adv = self.generator_loss_fn(fake_logits)
                loss += self.adversarial_weight * g_adv
            # Each replica's loss is a mean over its share of the global batch; gradients are
            # summed across replicas, so dividing by the replica count gives the global mean.
            # scale_loss: the loss scale of mixed_float16 (identity otherwise).
            scaled = self.generator_optimizer.scale_loss(loss / replicas)
        variables = self.generator_variables
        grads = tape.gradient(scaled, variables)
        ok = guard.apply_if_finite(
            self, self.generator_optimizer, grads, variables, loss, step=step
        )
        if self.restart_dead_codes:
            # Never re-seed codes from a step whose encoder outputs were not finite (a flag, not
            # a tf.cond: the restart gathers across replicas, which a branch may not hold).
            restarted = self.quantizer.restart(
                out["z"], out["counts"], self.generator_optimizer.iterations, enabled=ok
            )
            self._track(ok, restarted_codes=tf.cast(restarted, tf.float32))

        # Code statistics of the global batch (every replica's counts summed), so the logged
        # usage and perplexity do not depend on how the batch is split across replicas.
        counts = out["counts"]
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            counts = ctx.all_reduce(tf.distribute.ReduceOp.SUM, counts)
        usage, perplexity = quantizer_lib.code_statistics(counts)
        self._track(
            ok,
            loss=loss,
            l2=l2,
            logit_laplace=ll,
            vq=out["vq_loss"],
            codebook_loss=out["codebook_loss"],
            commitment_loss=out["commitment_loss"],
            psnr=ops.mean(image_utils.psnr(images, rec)),
            batch_codebook_usage=usage,
            batch_perplexity=perplexity,
        )
        if self.perceptual is not None:
            self._track(ok, perceptual=perceptual)
        if adversarial_active:
            self._discriminator_step(images, ops.stop_gradient(rec), replicas, step, ok)
            self._track(ok, generator_adversarial=g_adv)
        return {m.name: m.result() for m in self.metrics}

    def _discriminator_step(self, real, fake, replicas, step, generator_ok):
        # Read once, before `apply` increments the counter: a later read would see the next step.
        r1_step = tf.equal(self.discriminator_optimizer.iterations % self.r1_interval, 0)
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
            scaled = self.discriminator_optimizer.scale_loss(total / replicas)
        variables = self.discriminator.trainable_variables
        # A step counts as skipped once, even when both of its updates were.
        ok = guard.apply_if_finite(
            self,
            self.discriminator_optimizer,
            tape.gradient(scaled, variables),
            variables,
            total,
            step=step,
            count=generator_ok,
        )
        self._track(
            ok,
            discriminator_loss=d_loss,
            logits_real=ops.mean(real_logits),
            logits_fake=ops.mean(fake_logits),
        )
        if self.r1_gamma > 0:
            # Only the steps that computed R1 count toward its mean.
            guard.track(self._trackers["r1_penalty"], r1, tf.logical_and(ok, r1_step))

    # ----------------------------------------------------------------- summaries
    def summary_images(self, batch, max_images=8):
        """Traceable image summaries: {'reconstructions': ([2n, H, W, 3] float32 in [0, 1], 2)}.

        Inputs (first row) above their reconstructions (second row); the trainer runs this on a
        replica's device and lays the images out as a grid with the given number of rows.
        """
        images = batch["image"][:max_images]
        rec = self.reconstruct(images)
        return {"reconstructions": (ops.concatenate([ops.cast(images, "float32"), rec], 0), 2)}

    def model_info(self):
        """What a stage-2 prior needs to know about this quantizer (written to the model dir)."""
        return {
            "kind": self.kind,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "grid_size": self.grid_size,
            "codebook_size": self.codebook_size,
            "code_dim": self.code_dim,
        }

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
            image_size=self.image_size,
            patch_size=self.patch_size,
            encoder=self.encoder_config,
            decoder=self.decoder_config,
            codebook_size=self.codebook_size,
            code_dim=self.code_dim,
            beta=self.beta,
            l2_normalize=self.l2_normalize,
            restart_dead_codes=self.restart_dead_codes,
            eps=self.eps,
            min_log_scale=self.min_log_scale,
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


def load_quantizer(quantizer_dir):
    """A trained quantizer for inference, rebuilt from its model dir without gin.

    The discriminator and perceptual network are left out (they only serve training); the
    returned model is frozen (`trainable = False`).
    """
    model_dir_lib.check_model_dir(
        quantizer_dir, ("quantizer",), "a prior's quantizer is a trained stage-1 ViT-VQGAN dir"
    )
    config = model_dir_lib.read_model_config(quantizer_dir)
    config.update(
        adversarial_weight=0.0,
        discriminator=None,
        perceptual_weight=0.0,
        perceptual_weights_path=None,
    )
    model = ViTVQGAN.from_config(config)
    model.build()
    # Kept on the model (outside Keras tracking): which checkpoint the weights came from.
    object.__setattr__(
        model, "restored_checkpoint", model_dir_lib.restore_latest(model, quantizer_dir)
    )
    model.trainable = False
    return model
