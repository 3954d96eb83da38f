"""ViT-VQGAN: the stage-1 image tokenizer (the paper, Sec. 3): ViT encoder, factorized
l2-normalized codebook, ViT decoder with a logit-laplace output.

The codebook, the output distribution and the inference paths are those of every tokenizer
(`vim_tf.models.tokenizer.Tokenizer`). This module holds the inference network only; its GAN
training procedure (losses, discriminator, perceptual network, optimizers) is
`vim_tf.training.vqgan.VQGANTraining`.
"""

import gin
import keras
import tensorflow as tf

from vim_tf.config import checks
from vim_tf.models import matmuls
from vim_tf.models import tokenizer as tokenizer_lib
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
class ViTVQGAN(tokenizer_lib.Tokenizer):
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
    `codes`, `vq_loss`, `codebook_loss`, `commitment_loss`, `counts`). The inference paths
    (`encode`, `decode`, `reconstruct`) and `model_info` are `Tokenizer`'s.

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
        super().__init__(
            image_size,
            codebook_size,
            code_dim,
            beta,
            l2_normalize,
            restart_dead_codes,
            eps,
            min_log_scale,
            **kwargs,
        )
        checks.check_int("ViTVQGAN", "patch_size", patch_size)
        self._check_divisible(patch_size, f"ViTVQGAN.patch_size={patch_size}", "the patch size")
        self.patch_size = int(patch_size)
        self.encoder_config = _check_stack("encoder", encoder)
        self.decoder_config = _check_stack("decoder", decoder)
        self.encoder_width = self.encoder_config["hidden_dim"]
        self.decoder_width = self.decoder_config["hidden_dim"]
        self.encoder = ViTEncoder(image_size, patch_size, name="encoder", **self.encoder_config)
        self.grid_size = self.encoder.grid_size
        self._make_codebook(self.decoder_width)
        self.decoder = ViTDecoder(image_size, patch_size, name="decoder", **self.decoder_config)

    def model_info(self):
        """What a stage-2 prior needs to know about this tokenizer (written to the model dir)."""
        return dict(super().model_info(), patch_size=self.patch_size)

    def get_config(self):
        config = super().get_config()
        config.update(
            patch_size=self.patch_size, encoder=self.encoder_config, decoder=self.decoder_config
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
