"""Throughput measurements behind `vim-benchmark` (`tools/benchmark.py`) (medians of timed repetitions).

Every figure is a median over `repeats` timed runs after a warm-up run that traces and compiles.
Variants that are compared with each other (float32 vs mixed_bfloat16, XLA off vs on) are timed in
turns (A, B, A, B, ...), so background load on a shared machine hits them alike.

FLOPs: `stage1_flops` counts the matmul FLOPs of the stage-1 step analytically (2 FLOPs per
multiply-add; the formula is in its docstring); `profiled_flops` asks TF's graph profiler for an
independent count of the same traced step. The achieved GFLOP/s of the step are compared with the
GFLOP/s of a dense float32 matmul on the same machine (`matmul_gflops`).
"""

import contextlib
import os
import platform
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from vim_tf.models.vim import VIM
from vim_tf.models.vitvqgan import ViTVQGAN
from vim_tf.sampling import decoding
from vim_tf.training import optimizers, precision
from vim_tf.training.prior import PriorTraining
from vim_tf.training.vqgan import VQGANTraining

TINY_STACK = {"num_layers": 2, "num_heads": 4, "hidden_dim": 128, "mlp_dim": 512}
SS_STACK = {"num_layers": 8, "num_heads": 8, "hidden_dim": 512, "mlp_dim": 2048}

# Stage-1 sizes: the tiny config (gin/models/vitvqgan_tiny.gin at 32 px) and the SS config
# (gin/models/vitvqgan_ss.gin) at a reduced resolution, 64 px with its 8 px patches (64 tokens).
TINY_STAGE1 = dict(
    image_size=32, patch_size=4, stack=TINY_STACK, codebook_size=512, code_dim=32, batch=32
)
SS_STAGE1 = dict(
    image_size=64, patch_size=8, stack=SS_STACK, codebook_size=8192, code_dim=32, batch=8
)
# Minuscule sizes for smoke runs (tests): every code path, none of the cost.
SMOKE_STACK = {"num_layers": 1, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}
SMOKE_STAGE1 = dict(
    image_size=16, patch_size=4, stack=SMOKE_STACK, codebook_size=16, code_dim=4, batch=4
)


def timed(fn, repeats=5):
    """Median seconds of `fn()` over `repeats` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def timed_interleaved(fns, repeats=5):
    """Median seconds of each `fns[name]()`, the variants timed in turns after a warm-up each.

    Args:
      fns: dict name -> zero-argument callable.

    Returns:
      dict name -> median seconds.
    """
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _sync(x):
    return tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, x)


@contextlib.contextmanager
def dtype_policy(policy):
    """Runs the block under the global Keras dtype `policy`, then restores the previous one."""
    if policy not in precision.POLICIES:
        raise ValueError(f"policy must be one of {list(precision.POLICIES)}, got {policy!r}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def quantizer(
    image_size=32,
    patch_size=4,
    stack=None,
    codebook_size=512,
    code_dim=32,
    adversarial=False,
    policy="float32",
):
    """A stage-1 training procedure with its optimizers, built under the dtype `policy`."""
    stack = stack or TINY_STACK
    with dtype_policy(policy):
        network = ViTVQGAN(
            image_size=image_size,
            patch_size=patch_size,
            encoder=stack,
            decoder=stack,
            codebook_size=codebook_size,
            code_dim=code_dim,
        )
        model = VQGANTraining(
            network,
            adversarial_weight=0.1 if adversarial else 0.0,
            discriminator={"channel_base": 512, "channel_max": 32} if adversarial else None,
        )
        model.build_all()
        opts = {"generator": optimizers.make_optimizer(learning_rate=1e-4)}
        if adversarial:
            opts["discriminator"] = optimizers.make_optimizer(learning_rate=1e-4)
        model.compile_optimizers(opts)
        model.build_optimizers()
    return model


def tiny_quantizer(image_size=32, adversarial=False, policy="float32"):
    """The tiny stage-1 model (patch 4, dim 128, 2+2 blocks, codebook 512x32)."""
    return quantizer(image_size, adversarial=adversarial, policy=policy)


def _model_args(cfg):
    return {k: v for k, v in cfg.items() if k != "batch"}


def stage1_step(cfg=TINY_STAGE1, jit=False, adversarial=False, policy="float32"):
    """A zero-argument callable running one stage-1 train step on a fixed random batch.

    The step is traced (and compiled, with `jit`) here, under `policy`.
    """
    model = quantizer(**_model_args(cfg), adversarial=adversarial, policy=policy)
    size, batch = cfg["image_size"], cfg["batch"]
    data = {
        "image": tf.random.uniform((batch, size, size, 3)),
        "label": tf.zeros((batch,), tf.int32),
    }
    step = tf.function(model.train_step, jit_compile=jit)
    fn = lambda: _sync(step(data))  # noqa: E731
    with dtype_policy(policy):
        fn()
    return fn


def stage1_train(
    batch=32, image_size=32, jit=False, adversarial=False, repeats=5, policy="float32"
):
    """Images/s of the tiny stage-1 train step (32 px, patch 4, dim 128, 2+2 blocks, 512x32)."""
    cfg = dict(TINY_STAGE1, batch=batch, image_size=image_size)
    step = stage1_step(cfg, jit=jit, adversarial=adversarial, policy=policy)
    return cfg["batch"] / timed(step, repeats)


def stage1_variants(variants, cfg=TINY_STAGE1, repeats=5):
    """Images/s of stage-1 train-step variants timed in turns.

    Args:
      variants: dict name -> dict(jit=bool, policy=str, adversarial=bool), all optional.

    Returns:
      dict name -> images/s.
    """
    steps = {name: stage1_step(cfg, **v) for name, v in variants.items()}
    return {name: cfg["batch"] / t for name, t in timed_interleaved(steps, repeats).items()}


def stage1_encode(batch=256, image_size=32, jit=False, repeats=5, cfg=None):
    """Images/s of `encode` (default: the tiny config)."""
    model = quantizer(**dict(_model_args(cfg or TINY_STAGE1), image_size=image_size))
    images = tf.random.uniform((batch, image_size, image_size, 3))
    enc = tf.function(model.network.encode, jit_compile=jit)
    return batch / timed(lambda: enc(images).numpy(), repeats)


def tiny_prior(seq_len, policy="float32", smoke=False):
    """The tiny prior (gin/models/vim_tiny.gin sizes, dropout 0): 4 blocks, width 128."""
    grid = int(round(np.sqrt(seq_len)))
    size = dict(SMOKE_STACK) if smoke else dict(TINY_STACK, num_layers=4)
    with dtype_policy(policy):
        model = VIM(
            **size,
            grid_size=grid,
            codebook_size=16 if smoke else 512,
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
        lambda: decoding.sample_tokens(model, cls, 0, use_cache=use_cache, num_steps=steps),
        jit_compile=jit,
    )
    return batch * steps / timed(lambda: fn().numpy(), repeats)


def prior_step(seq_len=256, batch=16, jit=False, policy="float32", smoke=False):
    """A zero-argument callable running one stage-2 train step (traced here, under `policy`)."""
    network = tiny_prior(seq_len, policy, smoke)
    with dtype_policy(policy):
        model = PriorTraining(network)
        model.compile(optimizer=optimizers.make_optimizer(learning_rate=1e-4))
        model.build_optimizers()
    data = {
        "tokens": tf.random.uniform((batch, seq_len), 0, network.codebook_size, tf.int32),
        "label": tf.zeros((batch,), tf.int32),
    }
    step = tf.function(model.train_step, jit_compile=jit)
    fn = lambda: _sync(step(data))  # noqa: E731
    with dtype_policy(policy):
        fn()
    return fn


def prior_train(seq_len=256, batch=16, jit=False, repeats=5, policy="float32"):
    """Tokens/s of the tiny prior's train step."""
    step = prior_step(seq_len, batch, jit, policy)
    return batch * seq_len / timed(step, repeats)


def prior_variants(variants, seq_len=256, batch=16, repeats=5, smoke=False):
    """Tokens/s of stage-2 train-step variants (dict name -> dict(jit=, policy=)) timed in turns."""
    steps = {name: prior_step(seq_len, batch, smoke=smoke, **v) for name, v in variants.items()}
    return {name: batch * seq_len / t for name, t in timed_interleaved(steps, repeats).items()}


# ----------------------------------------------------------------------------- FLOPs


def block_flops(tokens, dim, mlp_dim):
    """Forward matmul FLOPs of one transformer block over `tokens` tokens of width `dim`.

    q/k/v and output projections 2*N*D*3D + 2*N*D*D = 8*N*D^2; attention logits q.k and the
    weighted sum of values 2 * 2*N*N*D = 4*N^2*D; MLP 2 * 2*N*D*M = 4*N*D*M.
    """
    n, d, m = tokens, dim, mlp_dim
    return 8 * n * d * d + 4 * n * n * d + 4 * n * d * m


def stage1_flops(
    image_size, patch_size, stack, codebook_size, code_dim, decoder=None, channels=3, out_channels=6
):
    """Matmul FLOPs per image of the stage-1 autoencoder (2 FLOPs per multiply-add).

    With N = (image_size / patch_size)^2 tokens, P = patch_size^2 * channels, encoder width D and
    MLP width M (decoder D', M'), L / L' blocks, K codes of dimension c:

      forward = 2*N*P*D                       patch embedding
              + L * block(N, D, M)            encoder blocks (`block_flops`)
              + 2*N*D*M + 2*N*M*D             encoder tanh feed-forward
              + 2*N*D*c                       projection to the lookup space
              + 2*N*c*K                       code similarities (one [N,c]x[c,K] matmul)
              + 2*N*c*D'                      projection back up
              + L' * block(N, D', M')         decoder blocks
              + 2*N*D'*M' + 2*N*M'*p^2*6      decoder feed-forward to the pixel head
      train   = 3 * forward                   (backward: gradients w.r.t. inputs and weights)
              - 2 * 2*N*c*K                   (the code choice is an argmax: no backward)
              - 2*N*P*D                       (no gradient w.r.t. the images)

    Elementwise work (layer norms, GELU, softmax, losses, the Adam update) is not counted; TF's
    profiler (`profiled_flops`) counts it, a few percent more at the tiny size.

    Returns:
      dict(forward=..., train=...) FLOPs per image.
    """
    dec = decoder or stack
    n = (image_size // patch_size) ** 2
    p = patch_size**2 * channels
    d, m = stack["hidden_dim"], stack["mlp_dim"]
    d2, m2 = dec["hidden_dim"], dec["mlp_dim"]
    patch = 2 * n * p * d
    codes = 2 * n * code_dim * codebook_size
    forward = (
        patch
        + stack["num_layers"] * block_flops(n, d, m)
        + 4 * n * d * m
        + 2 * n * d * code_dim
        + codes
        + 2 * n * code_dim * d2
        + dec["num_layers"] * block_flops(n, d2, m2)
        + 2 * n * d2 * m2
        + 2 * n * m2 * patch_size**2 * out_channels
    )
    return {"forward": forward, "train": 3 * forward - 2 * codes - patch}


def profiled_flops(fn, *args):
    """FLOPs of the graph `tf.function(fn)` traces for `args`, counted by TF's graph profiler
    (every op with registered FLOP statistics: matmuls, convolutions and elementwise ops)."""
    from tensorflow.python.profiler import model_analyzer, option_builder

    graph = tf.function(fn).get_concrete_function(*args).graph
    opts = option_builder.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return int(model_analyzer.profile(graph, options=opts).total_float_ops)


def matmul_step(n=2048, dtype="float32"):
    """A zero-argument callable running one dense n x n matmul (2*n^3 FLOPs) in a tf.function."""
    a = tf.cast(tf.random.normal((n, n)), dtype)
    b = tf.cast(tf.random.normal((n, n)), dtype)
    fn = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)))
    return lambda: fn().numpy()


def matmul_gflops(n=2048, dtype="float32", repeats=5):
    """GFLOP/s of a dense n x n matmul, median of `repeats`."""
    return 2.0 * n**3 / timed(matmul_step(n, dtype), repeats) / 1e9


def stage1_flops_report(cfg=TINY_STAGE1, repeats=5, matmul_n=2048):
    """Achieved GFLOP/s of the stage-1 train step (XLA off and on) against a dense matmul's."""
    model_args = _model_args(cfg)
    flops = stage1_flops(**model_args)
    batch = cfg["batch"]
    step_flops = flops["train"] * batch
    model = quantizer(**model_args)
    data = {
        "image": tf.random.uniform((batch, cfg["image_size"], cfg["image_size"], 3)),
        "label": tf.zeros((batch,), tf.int32),
    }
    profiled = profiled_flops(model.train_step, data)
    # The matmul is timed in turns with the steps: background load hits all three alike.
    times = timed_interleaved(
        {
            "plain": stage1_step(cfg),
            "xla": stage1_step(cfg, jit=True),
            "matmul": matmul_step(matmul_n),
        },
        repeats,
    )
    peak = 2.0 * matmul_n**3 / times.pop("matmul") / 1e9
    achieved = {k: step_flops / t / 1e9 for k, t in times.items()}
    return {
        "config": {k: v for k, v in cfg.items()},
        "forward_flops_per_image": flops["forward"],
        "train_flops_per_image": flops["train"],
        "train_step_flops": step_flops,
        "profiler_train_step_flops": profiled,
        "step_seconds": times["plain"],
        "step_seconds_xla": times["xla"],
        "achieved_gflops": achieved["plain"],
        "achieved_gflops_xla": achieved["xla"],
        f"matmul_{matmul_n}_float32_gflops": peak,
        "fraction_of_matmul": achieved["plain"] / peak,
        "fraction_of_matmul_xla": achieved["xla"] / peak,
    }


def machine():
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "devices": [d.name for d in tf.config.list_logical_devices()],
    }


GROUPS = ("stage1", "stage1_ss", "encode", "stage2", "sampling", "flops")


def fmt(value):
    """A throughput for the table: thousands separators, decimals only for small numbers."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


class _Report:
    """The rows of one benchmark run, printed as they are measured."""

    def __init__(self, smoke, quick):
        self.smoke = smoke
        self.repeats = 1 if smoke else 2 if quick else 5
        self.tiny = SMOKE_STAGE1 if smoke else TINY_STAGE1
        self.ss = SMOKE_STAGE1 if smoke else SS_STAGE1
        self.seq, self.prior_batch = (16, 2) if smoke else (256, 16)
        self.rows = []
        self.extra = {}

    def add(self, name, value, unit):
        self.rows.append({"name": name, "value": float(value), "unit": unit})
        print(f"{name:<66} {fmt(value):>12} {unit}", flush=True)

    def add_ratios(self, name, res, unit):
        for variant, value in res.items():
            self.add(f"{name}, {variant}", value, unit)
        if "mixed_bfloat16" in res:
            self.add(
                f"{name}: mixed_bfloat16 / float32", res["mixed_bfloat16"] / res["float32"], "x"
            )
        if "float32, XLA" in res:
            self.add(f"{name}: XLA / no XLA (float32)", res["float32, XLA"] / res["float32"], "x")


def _label(cfg, what):
    return f"{what} {cfg['image_size']}px patch {cfg['patch_size']} batch {cfg['batch']}"


# The precision and compiler variants of a train step, timed in turns against each other.
_STEP_VARIANTS = {
    "float32": {},
    "float32, XLA": {"jit": True},
    "mixed_bfloat16": {"policy": "mixed_bfloat16"},
    "mixed_bfloat16, XLA": {"policy": "mixed_bfloat16", "jit": True},
}


def _stage1_group(rep):
    variants = dict(_STEP_VARIANTS, **{"float32, with GAN step": {"adversarial": True}})
    res = stage1_variants(variants, cfg=rep.tiny, repeats=rep.repeats)
    rep.add_ratios(_label(rep.tiny, "stage1 train, tiny"), res, "img/s")


def _stage1_ss_group(rep):
    variants = {"float32": {}, "mixed_bfloat16": {"policy": "mixed_bfloat16"}}
    res = stage1_variants(variants, cfg=rep.ss, repeats=rep.repeats)
    for variant, value in res.items():
        rep.add(f"{_label(rep.ss, 'stage1 train, SS')}, {variant}", value, "img/s")


def _encode_group(rep):
    batch, size = (8 if rep.smoke else 256), rep.tiny["image_size"]
    rate = stage1_encode(batch, size, repeats=rep.repeats, cfg=rep.tiny)
    rep.add(f"stage1 encode, tiny {size}px batch {batch}", rate, "img/s")


def _stage2_group(rep):
    res = prior_variants(
        _STEP_VARIANTS,
        seq_len=rep.seq,
        batch=rep.prior_batch,
        repeats=rep.repeats,
        smoke=rep.smoke,
    )
    name = f"stage2 train, tiny prior seq {rep.seq} batch {rep.prior_batch}"
    rep.add_ratios(name, res, "tokens/s")


def _sampling_group(rep):
    repeats = max(rep.repeats - 1, 1)
    for length in (16,) if rep.smoke else (256, 1024):
        cached = sampling(length, True, steps=4 if rep.smoke else None, repeats=repeats)
        rep.add(f"sampling seq {length}, batch 8, KV cache", cached, "tokens/s")
        uncached = sampling(length, False, steps=4 if rep.smoke else 32, repeats=repeats)
        name = f"sampling seq {length}, batch 8, no cache (full recomputation)"
        rep.add(name, uncached, "tokens/s")


def _flops_group(rep):
    n = 256 if rep.smoke else 2048
    flops = stage1_flops_report(rep.tiny, repeats=rep.repeats, matmul_n=n)
    rep.extra["flops"] = flops
    name = _label(rep.tiny, "stage1 train step, tiny")
    rep.add(f"{name}: GFLOP per step (analytic, matmuls)", flops["train_step_flops"] / 1e9, "GFLOP")
    profiled = flops["profiler_train_step_flops"] / 1e9
    rep.add(f"{name}: GFLOP per step (TF profiler, all ops)", profiled, "GFLOP")
    rep.add(f"{name}: achieved", flops["achieved_gflops"], "GFLOP/s")
    rep.add(f"{name}: achieved, XLA", flops["achieved_gflops_xla"], "GFLOP/s")
    rep.add(f"dense matmul {n}x{n} float32", flops[f"matmul_{n}_float32_gflops"], "GFLOP/s")
    bf16 = matmul_gflops(n, "bfloat16", repeats=rep.repeats)
    flops[f"matmul_{n}_bfloat16_gflops"] = bf16
    rep.add(f"dense matmul {n}x{n} bfloat16", bf16, "GFLOP/s")
    rep.add(f"{name}: achieved / dense matmul", 100 * flops["fraction_of_matmul"], "%")
    rep.add(f"{name}: achieved / dense matmul, XLA", 100 * flops["fraction_of_matmul_xla"], "%")


_GROUP_FNS = {
    "stage1": _stage1_group,
    "stage1_ss": _stage1_ss_group,
    "encode": _encode_group,
    "stage2": _stage2_group,
    "sampling": _sampling_group,
    "flops": _flops_group,
}


def run_all(quick=False, groups=None, smoke=False):
    """Runs the measurements of `groups` (default: all of GROUPS), printing each row.

    Args:
      quick: 2 timed repetitions instead of 5 (a fast, noisier run).
      groups: names from GROUPS to run.
      smoke: minuscule model sizes (tests: every code path in seconds; numbers meaningless).

    Returns:
      {"machine": ..., "results": [{name, value, unit}], "flops": {...} (with the flops group)}.
    """
    groups = tuple(groups or GROUPS)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown benchmark groups {unknown}; valid: {list(GROUPS)}")
    rep = _Report(smoke, quick)
    report = {"machine": machine(), "results": rep.rows}
    for group in GROUPS:
        if group in groups:
            _GROUP_FNS[group](rep)
    report.update(rep.extra)
    return report


def table(report):
    """The results as a markdown table (the README's Benchmarks section)."""
    lines = ["| measurement | result |", "|---|---|"]
    for row in report["results"]:
        lines.append(f"| {row['name']} | {fmt(row['value'])} {row['unit']} |")
    return "\n".join(lines)
