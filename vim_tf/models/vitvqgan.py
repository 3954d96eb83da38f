"""ViT-VQGAN: the stage-1 image tokenizer (the paper, Sec. 3): ViT encoder, factorized
l2-normalized codebook, ViT decoder with a logit-laplace output.

This module holds the inference network only; its GAN training procedure (losses, discriminator,
perceptual network, optimizers) is `vim_tf.training.vqgan.VQGANTraining`.
"""

import gin
import keras
import tensorflow as tf
from keras import ops

from vim_tf.config import checks
from vim_tf.losses import reconstruction
from vim_tf.models import matmuls
from vim_tf.models import quantizer as quantizer_lib
from vim_tf.models.vit import ViTDecoder, ViTEncoder

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


@gin.register
@keras.saving.register_keras_serializable(package="vim_tf")
class ViTVQGAN(keras.Model):
    """ViT encoder -> factorized l2-normalized codebook -> ViT decoder (the tokenizer).

    Args:
      image_size, patch_size: square images and patches; the token grid is image_size/patch_size.
      encoder, decoder: dicts with num_layers, num_heads, hidden_dim, mlp_dim (the paper,
        Table 1) and optionally dropout.
      codebook_size, code_dim, beta, l2_normalize: the codebook (8192, 32, 0.25, True in the
        paper); beta weighs the commitment term of the codebook's VQ loss.
      restart_dead_codes: re-seed unused codes from encoder outputs during training (not in the
        paper; see `VectorQuantizer`).
      eps: the logit-laplace pixel squeeze (0.1).
      min_log_scale: soft lower bound on the logit-laplace log-scale; without it the likelihood of
        saturated pixels (digit backgrounds are exactly 0) grows without bound as b -> 0.

    Call: `images: [B, H, W, 3] float in [0, 1] -> dict` with `reconstruction` [B,H,W,3] in
    [0,1], `loc`/`log_scale` [B,H,W,3], `indices` int32 [B,h,w] and the codebook's outputs (`z`,
    `codes`, `vq_loss`, `codebook_loss`, `commitment_loss`, `counts`).

    Example:
      >>> net = ViTVQGAN(16, 4, encoder=stack, decoder=stack, codebook_size=16, code_dim=4)
      >>> tokens = net.encode(images)         # int32 [B, 4, 4]
      >>> images = net.decode(tokens)         # float32 [B, 16, 16, 3] in [0, 1]
    """

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
        **kwargs,
    ):
        super().__init__(**kwargs)
        checks.check_float("ViTVQGAN", "beta", beta, low=0.0)
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
        self.encoder = ViTEncoder(image_size, patch_size, name="encoder", **self.encoder_config)
        self.grid_size = self.encoder.grid_size
        self.codebook = quantizer_lib.VectorQuantizer(
            codebook_size,
            code_dim,
            self.decoder_config["hidden_dim"],
            beta=beta,
            l2_normalize=l2_normalize,
            restart_dead_codes=restart_dead_codes,
            name="codebook",
        )
        self.decoder = ViTDecoder(image_size, patch_size, name="decoder", **self.decoder_config)

    def build(self, input_shape=None):
        tokens = (None, self.grid_size**2)
        self.encoder.build((None, self.image_size, self.image_size, 3))
        self.codebook.build(tokens + (self.encoder_config["hidden_dim"],))
        self.decoder.build(tokens + (self.decoder_config["hidden_dim"],))
        self.built = True

    def _distribution(self, codes, training=None):
        out = ops.cast(self.decoder(codes, training=training), "float32")
        # A split, not two slices: its gradient is one concat instead of two zero-padded copies.
        loc, raw_log_scale = ops.split(out, 2, axis=-1)
        # Soft lower bound: min + softplus(raw - min) ~ raw above the bound, keeps gradients.
        log_scale = self.min_log_scale + ops.softplus(raw_log_scale - self.min_log_scale)
        return loc, log_scale

    def call(self, images, training=None):
        q = self.codebook(self.encoder(images, training=training))
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
        _, idx = self.codebook.lookup(self.encoder(images, training=False))
        return ops.reshape(idx, (-1, self.grid_size, self.grid_size))

    def decode(self, indices):
        """token ids [B, h, w] -> images float32 [B, H, W, 3] in [0, 1]."""
        flat = ops.reshape(indices, (-1, self.grid_size * self.grid_size))
        loc, _ = self._distribution(self.codebook.embed(flat), training=False)
        return reconstruction.logit_laplace_mean(loc, self.eps)

    def reconstruct(self, images):
        """images [B, H, W, 3] in [0, 1] -> their reconstructions through the tokens."""
        return self.decode(self.encode(images))

    def model_info(self):
        """What a stage-2 prior needs to know about this tokenizer (written to the model dir)."""
        return {
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "grid_size": self.grid_size,
            "codebook_size": self.codebook_size,
            "code_dim": self.code_dim,
        }

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
        )
        return config


def compiled_encode(network, matmul_dtype=None, jit_compile=True):
    """The compiled `network.encode` (images [B, H, W, 3] in [0, 1] -> int32 tokens [B, h, w]) that
    the encode tool, the evaluator and the benchmark run.

    Args:
      network: a built `ViTVQGAN`.
      matmul_dtype: the encoder's matmul dtype (`vim_tf.models.matmuls`), 'float32' by
        default: token files are data, and bfloat16 products move a few percent of the tokens
        to a neighbouring code. 'bfloat16' is faster on bfloat16 hardware. The code choice
        itself (projection, similarities, argmax) is float32 either way.
      jit_compile: compile with XLA (the default: it fuses the layer norms, activations and
        attention softmax around the products and gives the same tokens as graph mode). The
        function compiles once per batch shape.
    """
    dtype = matmul_dtype or "float32"
    encode = tf.function(network.encode, jit_compile=bool(jit_compile))

    def run(images):
        # The setting is read while the function is traced (on its first call per shape).
        with matmuls.use_matmul_dtype(dtype):
            return encode(images)

    return run
