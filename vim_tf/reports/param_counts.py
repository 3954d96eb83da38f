"""Parameter counts of the gin model configs next to the paper's (the paper, Table 1), and the
stage-1 networks' FLOPs per image (`vim_tf.reports.flops`)."""

import gin
import keras

from vim_tf.config import gin_utils
from vim_tf.models.cnn_vqgan import CNNVQGAN
from vim_tf.reports import flops
from vim_tf.training import trainer

# Millions of parameters per stack (encoder or decoder) in the paper's Table 1.
PAPER_STACK_PARAMS_M = {"small": 32, "base": 91, "large": 599}
PAPER_VIM_M = {"vim_base": 650, "vim_large": 1697}
PAPER_VITVQGAN = {
    "vitvqgan_ss": ("small", "small"),
    "vitvqgan_bb": ("base", "base"),
    "vitvqgan_sl": ("small", "large"),
}


def _count(layer):
    return int(sum(keras.ops.size(w) for w in layer.weights))


def vitvqgan_counts(name, image_size=256):
    """Builds `gin/models/<name>.gin` and counts encoder, quantizer, decoder, discriminator."""
    gin.clear_config()
    gin_utils.parse([f"models/{name}.gin"], [f"IMAGE_SIZE = {image_size}"])
    procedure = trainer.create_model()
    procedure.build()
    model, discriminator = procedure.network, procedure.discriminator
    counts = {
        "encoder": _count(model.encoder),
        "quantizer": _count(model.codebook),
        "decoder": _count(model.decoder),
        "discriminator": _count(discriminator) if discriminator is not None else 0,
    }
    gin.clear_config()
    return counts


def table(names=tuple(PAPER_VITVQGAN), image_size=256):
    """Rows of (config, part, ours in M, paper in M)."""
    rows = []
    for name in names:
        counts = vitvqgan_counts(name, image_size)
        enc, dec = PAPER_VITVQGAN.get(name, (None, None))
        rows.append((name, "encoder", counts["encoder"] / 1e6, PAPER_STACK_PARAMS_M.get(enc)))
        rows.append((name, "decoder", counts["decoder"] / 1e6, PAPER_STACK_PARAMS_M.get(dec)))
        rows.append((name, "quantizer", counts["quantizer"] / 1e6, None))
        rows.append((name, "discriminator", counts["discriminator"] / 1e6, None))
    return rows


def vim_counts(name, grid_size=32, codebook_size=8192, num_classes=1000):
    """Builds `gin/models/<name>.gin` for a 256 px / 8 px-patch quantizer (32x32 tokens, 8192
    codes) and 1000 classes; returns its parameter count."""
    gin.clear_config()
    gin_utils.parse(
        [f"models/{name}.gin"],
        [
            f"VIM.grid_size = {grid_size}",
            f"VIM.codebook_size = {codebook_size}",
            f"VIM.num_classes = {num_classes}",
        ],
    )
    network = trainer.create_model().network
    network.build()
    count = _count(network)
    gin.clear_config()
    return count


def vim_table(names=tuple(PAPER_VIM_M)):
    return [(name, "prior", vim_counts(name) / 1e6, PAPER_VIM_M.get(name)) for name in names]


def network_flops(network):
    """Matmul and convolution FLOPs per image of a stage-1 network (`ViTVQGAN` or `CNNVQGAN`):
    dict(encode=..., forward=..., train=...)."""
    common = dict(codebook_size=network.codebook_size, code_dim=network.code_dim)
    if isinstance(network, CNNVQGAN):
        return flops.cnn_stage1_flops(
            network.image_size,
            network.channels,
            network.channel_multipliers,
            network.num_res_blocks,
            network.attention,
            **common,
        )
    return flops.stage1_flops(
        network.image_size,
        network.patch_size,
        network.encoder_config,
        decoder=network.decoder_config,
        **common,
    )


def flops_table(names, image_size=256):
    """Rows of (config, what, millions of FLOPs per image, None) for the stage-1 configs: the
    parameter total, then the encode and forward FLOPs of `network_flops`."""
    rows = []
    for name in names:
        gin.clear_config()
        gin_utils.parse([f"models/{name}.gin"], [f"IMAGE_SIZE = {image_size}"])
        network = trainer.create_model().network
        network.build()
        counts = network_flops(network)
        gin.clear_config()
        rows.append((name, "network total", _count(network) / 1e6, None))
        rows.append((name, "encode MFLOP", counts["encode"] / 1e6, None))
        rows.append((name, "forward MFLOP", counts["forward"] / 1e6, None))
    return rows
