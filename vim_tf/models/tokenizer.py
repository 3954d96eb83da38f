"""What every stage-1 image tokenizer shares: encoder -> factorized l2-normalized codebook ->
decoder with a logit-laplace output (the paper, Sec. 3).

`ViTVQGAN` (Transformer encoder/decoder) and `CNNVQGAN` (convolutional, the paper's Table 4
"architecture: CNN" row) subclass `Tokenizer`; they differ only in the encoder and decoder. Both
are trained by `vim_tf.training.vqgan.VQGANTraining` with the same losses and discriminator.
"""

import keras
from keras import ops

from vim_tf.config import checks
from vim_tf.losses import reconstruction
from vim_tf.models import quantizer as quantizer_lib


class Tokenizer(keras.Model):
    """Base class of the image tokenizers: the codebook, the output distribution and the
    inference paths (call, encode, decode, reconstruct).

    A subclass creates, in this order, `self.encoder` (images [B, H, W, 3] in [0, 1] ->
    [B, grid_size**2, encoder_width], tokens in raster order), the codebook (`_make_codebook`),
    and `self.decoder` ([B, grid_size**2, decoder_width] -> [B, H, W, 6]: channels [0:3] the
    logit-laplace location, [3:6] its raw log-scale), and sets `grid_size`, `encoder_width` and
    `decoder_width`.

    Args:
      image_size: square images of this many pixels a side.
      codebook_size, code_dim, beta, l2_normalize: the codebook (8192, 32, 0.25, True in the
        paper); beta weighs the commitment term of the codebook's VQ loss.
      restart_dead_codes: re-seed unused codes from encoder outputs during training (not in the
        paper; see `VectorQuantizer`).
      eps: the logit-laplace pixel squeeze (0.1).
      min_log_scale: soft lower bound on the logit-laplace log-scale; without it the likelihood of
        saturated pixels (digit backgrounds are exactly 0) grows without bound as b -> 0.
    """

    def __init__(
        self,
        image_size,
        codebook_size,
        code_dim,
        beta,
        l2_normalize,
        restart_dead_codes,
        eps,
        min_log_scale,
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = type(self).__name__
        checks.check_float(owner, "beta", beta, low=0.0)
        checks.check_float(owner, "eps", eps, 0.0, 0.5, low_open=True, high_open=True)
        checks.check_float(owner, "min_log_scale", min_log_scale)
        checks.check_int(owner, "image_size", image_size)
        checks.check_int(owner, "codebook_size", codebook_size, hint=" (8192 in the paper)")
        checks.check_int(owner, "code_dim", code_dim, hint=" (32 in the paper)")
        self.image_size = int(image_size)
        self.codebook_size = int(codebook_size)
        self.code_dim = int(code_dim)
        self.beta = float(beta)
        self.l2_normalize = bool(l2_normalize)
        self.restart_dead_codes = bool(restart_dead_codes)
        self.eps = float(eps)
        self.min_log_scale = float(min_log_scale)

    def _check_divisible(self, factor, factor_text, factor_noun):
        """Raises unless image_size is a multiple of `factor` (the image-to-grid reduction).

        Args:
          factor: pixels per token along a side.
          factor_text: how the message names it, e.g. "ViTVQGAN.patch_size=8".
          factor_noun: what a valid image size is a multiple of, e.g. "the patch size".
        """
        if self.image_size % factor:
            below = self.image_size // factor * factor
            nearest = [n for n in (below, below + factor) if n > 0]
            raise ValueError(
                f"{type(self).__name__}.image_size={self.image_size} is not divisible by "
                f"{factor_text}: use an image size that is a multiple of {factor_noun} (e.g. "
                f"{' or '.join(map(str, nearest))})"
            )

    def _make_codebook(self, output_dim):
        """Creates `self.codebook`, projecting the chosen codes up to `output_dim`."""
        self.codebook = quantizer_lib.VectorQuantizer(
            self.codebook_size,
            self.code_dim,
            output_dim,
            beta=self.beta,
            l2_normalize=self.l2_normalize,
            restart_dead_codes=self.restart_dead_codes,
            name="codebook",
        )

    def build(self, input_shape=None):
        tokens = (None, self.grid_size**2)
        self.encoder.build((None, self.image_size, self.image_size, 3))
        self.codebook.build(tokens + (self.encoder_width,))
        self.decoder.build(tokens + (self.decoder_width,))
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
        """What a stage-2 prior needs to know about this tokenizer (written to the model dir);
        `network` names the class `vim_tf.models.loading` rebuilds it as."""
        return {
            "network": type(self).__name__,
            "image_size": self.image_size,
            "grid_size": self.grid_size,
            "codebook_size": self.codebook_size,
            "code_dim": self.code_dim,
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            image_size=self.image_size,
            codebook_size=self.codebook_size,
            code_dim=self.code_dim,
            beta=self.beta,
            l2_normalize=self.l2_normalize,
            restart_dead_codes=self.restart_dead_codes,
            eps=self.eps,
            min_log_scale=self.min_log_scale,
        )
        return config
