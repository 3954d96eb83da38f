"""Throughput measurements behind `tools/benchmark.py` (medians of timed repetitions).

Every figure is a median over `repeats` timed runs after a warm-up run that traces and compiles.
"""

import os
import platform
import statistics
import time

import numpy as np
import tensorflow as tf

from vim_tf.models.vim import VIM
from vim_tf.models.vitvqgan import ViTVQGAN
from vim_tf.training import optimizers

TINY_STACK = {"num_layers": 2, "num_heads": 4, "hidden_dim": 128, "mlp_dim": 512}


def timed(fn, repeats=5):
    """Median seconds of `fn()` over `repeats` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _sync(x):
    return tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, x)


def tiny_quantizer(image_size=32, adversarial=False):
    model = ViTVQGAN(
        image_size=image_size,
        patch_size=4,
        encoder=TINY_STACK,
        decoder=TINY_STACK,
        codebook_size=512,
        code_dim=32,
        adversarial_weight=0.1 if adversarial else 0.0,
        discriminator={"channel_base": 512, "channel_max": 32} if adversarial else None,
    )
    model.build_all()
    opts = {"generator": optimizers.make_optimizer(learning_rate=1e-4)}
    if adversarial:
        opts["discriminator"] = optimizers.make_optimizer(learning_rate=1e-4)
    model.compile(**opts)
    model.build_optimizers()
    return model


def stage1_train(batch=32, image_size=32, jit=False, adversarial=False, repeats=5):
    """Images/s of the tiny stage-1 train step (32 px, patch 4, dim 128, 2+2 blocks, 512x32)."""
    model = tiny_quantizer(image_size, adversarial)
    data = {
        "image": tf.random.uniform((batch, image_size, image_size, 3)),
        "label": tf.zeros((batch,), tf.int32),
    }
    step = tf.function(model.train_step, jit_compile=jit)
    return batch / timed(lambda: _sync(step(data)), repeats)


def stage1_encode(batch=256, image_size=32, jit=False, repeats=5):
    model = tiny_quantizer(image_size)
    images = tf.random.uniform((batch, image_size, image_size, 3))
    enc = tf.function(model.encode, jit_compile=jit)
    return batch / timed(lambda: enc(images).numpy(), repeats)


def tiny_prior(seq_len):
    grid = int(round(np.sqrt(seq_len)))
    model = VIM(
        num_layers=4,
        num_heads=4,
        hidden_dim=128,
        mlp_dim=512,
        grid_size=grid,
        codebook_size=512,
        dropout=0.0,
        num_classes=10,
    )
    model.build()
    return model


def sampling(seq_len, use_cache, batch=8, steps=None, jit=False, repeats=3):
    """Tokens/s of autoregressive sampling from a tiny prior (4 blocks, width 128).

    With static shapes each step costs the same whatever its position (the cached step attends
    over the full, masked cache; the uncached step recomputes the full padded sequence), so
    `steps` < seq_len times a prefix of the loop and the rate holds for the whole sequence.
    """
    model = tiny_prior(seq_len)
    steps = steps or seq_len
    cls = tf.zeros([batch], tf.int32)
    fn = tf.function(
        lambda: model.sample_tokens(cls, 0, use_cache=use_cache, num_steps=steps), jit_compile=jit
    )
    return batch * steps / timed(lambda: fn().numpy(), repeats)


def prior_train(seq_len=256, batch=16, jit=False, repeats=5):
    model = tiny_prior(seq_len)
    model.compile(prior=optimizers.make_optimizer(learning_rate=1e-4))
    model.build_optimizers()
    data = {
        "tokens": tf.random.uniform((batch, seq_len), 0, 512, tf.int32),
        "label": tf.zeros((batch,), tf.int32),
    }
    step = tf.function(model.train_step, jit_compile=jit)
    return batch * seq_len / timed(lambda: _sync(step(data)), repeats)


def machine():
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "devices": [d.name for d in tf.config.list_logical_devices()],
    }


def run_all(quick=False):
    """Every measurement; returns {"machine": ..., "results": [{name, value, unit}]}."""
    r = 2 if quick else 5
    rows = []

    def add(name, value, unit):
        rows.append({"name": name, "value": float(value), "unit": unit})
        print(f"{name:<58} {value:>12.1f} {unit}", flush=True)

    add("stage1 train, tiny 32px batch 32 (autoencoder step)", stage1_train(repeats=r), "img/s")
    add("stage1 train, tiny 32px batch 32, XLA", stage1_train(jit=True, repeats=r), "img/s")
    add(
        "stage1 train, tiny 32px batch 32, with GAN step",
        stage1_train(adversarial=True, repeats=r),
        "img/s",
    )
    add("stage1 encode, tiny 32px batch 256", stage1_encode(repeats=r), "img/s")
    add("stage2 train, tiny prior seq 256 batch 16", prior_train(repeats=r), "tokens/s")
    for seq in (256, 1024):
        add(
            f"sampling seq {seq}, batch 8, KV cache",
            sampling(seq, True, repeats=r - 1 or 1),
            "tokens/s",
        )
        add(
            f"sampling seq {seq}, batch 8, no cache (full recomputation)",
            sampling(seq, False, steps=32, repeats=r - 1 or 1),
            "tokens/s",
        )
    return {"machine": machine(), "results": rows}
