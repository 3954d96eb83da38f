"""Tiny gin bindings that turn the digits experiments into seconds-long test runs."""

TINY_VITVQGAN = (
    "IMAGE_SIZE = 16",
    "BATCH_SIZE = 8",
    "TRAIN_STEPS = 6",
    "CHECKPOINT_EVERY = 3",
    "ViTVQGAN.encoder = {'num_layers': 1, 'num_heads': 2, 'hidden_dim': 16, 'mlp_dim': 32}",
    "ViTVQGAN.decoder = {'num_layers': 1, 'num_heads': 2, 'hidden_dim': 16, 'mlp_dim': 32}",
    "ViTVQGAN.codebook_size = 16",
    "ViTVQGAN.code_dim = 4",
    "VQGANTraining.discriminator = {'channel_base': 64, 'channel_max': 8}",
    "VQGANTraining.disc_start_step = 3",
    "WarmupCosine.warmup_steps = 2",
    "train.log_every = 2",
    "train.image_every = 3",
    "train.jit_compile = False",
)


def tiny_vitvqgan_bindings(data_dir, *extra):
    """Bindings for gin/experiments/digits_vitvqgan.gin with a private TFDS data dir."""
    return list(TINY_VITVQGAN) + [f"make_dataset.data_dir = '{data_dir}'", *extra]


TINY_VIM = (
    "BATCH_SIZE = 8",
    "TRAIN_STEPS = 4",
    "CHECKPOINT_EVERY = 2",
    "VIM.num_layers = 1",
    "VIM.num_heads = 2",
    "VIM.hidden_dim = 16",
    "VIM.mlp_dim = 32",
    "WarmupHoldExponential.warmup_steps = 1",
    "WarmupHoldExponential.decay_start = 2",
    "train.log_every = 2",
    "train.image_every = 4",
    "train.jit_compile = False",
)

TINY_CLASSIFIER = (
    "IMAGE_SIZE = 16",
    "BATCH_SIZE = 16",
    "TRAIN_STEPS = 4",
    "CHECKPOINT_EVERY = 4",
    "ImageClassifier.channels = (8, 8)",
    "ImageClassifier.feature_dim = 16",
    "WarmupCosine.warmup_steps = 1",
    "train.log_every = 2",
)


def with_data_dir(bindings, data_dir, *extra):
    return list(bindings) + [f"make_dataset.data_dir = '{data_dir}'", *extra]


def train_tiny_quantizer(model_dir, data_dir, steps=2):
    """Trains the tiny digits quantizer (autoencoder phase only) into `model_dir`."""
    import gin

    from vim_tf.training import train_lib

    gin.clear_config()
    model = train_lib.run(
        model_dir,
        ["gin/experiments/digits_vitvqgan.gin"],
        tiny_vitvqgan_bindings(
            data_dir, f"TRAIN_STEPS = {steps}", "VQGANTraining.disc_start_step = 10"
        ),
    )
    gin.clear_config()
    return model
