"""Tiny constructor arguments shared by the tests: 16 px images, 1-2 blocks, small codebooks.

Functions rather than constants: every call returns new dicts, so a test that changes its copy
cannot change another test's. Keyword arguments override single entries:

    ViTEncoder(**tiny_configs.vit_encoder(num_layers=2))
"""

IMAGE_SIZE = 16
PATCH_SIZE = 4
GRID_SIZE = IMAGE_SIZE // PATCH_SIZE


def vit_stack(**overrides):
    """One transformer stack as `ViTVQGAN.encoder` / `ViTVQGAN.decoder` take it."""
    return {"num_layers": 1, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32, **overrides}


def vit_encoder(**overrides):
    """`ViTEncoder` / `ViTDecoder` arguments: 16 px images, 4 px patches (a 4 x 4 grid)."""
    return {"image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE, **vit_stack(), **overrides}


def codebook(**overrides):
    """`VectorQuantizer` arguments: 16 codes of width 4, projected up to the decoder width 16."""
    return {"codebook_size": 16, "code_dim": 4, "output_dim": 16, **overrides}


def discriminator(**overrides):
    """`StyleGANDiscriminator` arguments for 16 px images: channels 8, 16, 16 at 16, 8, 4 px."""
    return {"image_size": IMAGE_SIZE, "channel_base": 128, "channel_max": 16, **overrides}


def vitvqgan_network(**overrides):
    """`ViTVQGAN` network arguments: one-block stacks, 16 codes of 4 dimensions."""
    return {
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
        "encoder": vit_stack(),
        "decoder": vit_stack(),
        "codebook_size": 16,
        "code_dim": 4,
        **overrides,
    }


def vim(**overrides):
    """`VIM` arguments: two blocks over a 3 x 3 grid of 11 codes, three classes."""
    return {
        "num_layers": 2,
        "num_heads": 2,
        "hidden_dim": 16,
        "mlp_dim": 32,
        "grid_size": 3,
        "codebook_size": 11,
        "dropout": 0.0,
        "num_classes": 3,
        **overrides,
    }


def classifier(**overrides):
    """`ImageClassifier` arguments: two conv blocks of 8 channels on 16 px images."""
    return {
        "image_size": IMAGE_SIZE,
        "num_classes": 3,
        "channels": (8, 8),
        "feature_dim": 16,
        **overrides,
    }
