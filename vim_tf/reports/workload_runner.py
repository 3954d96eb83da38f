"""Times the benchmark workloads of one source tree in this process; prints one JSON line each.

Run by path, with the tree to measure first on the path (`tools/benchmark.py` starts it once per
tree and workload, alternating trees):

  PYTHONPATH=<tree> python <this file> --tree=<tree> --workloads=stage1_tiny \
      --variants=float32,defaults --repeats=8

It imports `vim_tf` from whichever tree is on the path and detects its API: "new" (the training
procedures `vim_tf.training.vqgan.VQGANTraining` / `vim_tf.training.prior.PriorTraining` around the
networks, sampling in `vim_tf.sampling.decoding`) or "old" (commit 17cb61c: `ViTVQGAN` and `VIM`
are the trainable models themselves, `VIM.sample_tokens`). Nothing else from the tree is used, so
this file runs against either. Shared defaults a tree lacks read as the old behaviour (float32,
no XLA, a plain `tf.function` encode).

Each job builds every requested variant of one workload, calling each once (the warm-up: tracing
and compiling), then times them in turns (A, B, A, B, ...) together with a dense n x n matmul in
each compute dtype the variants use (the peak the steps are compared with). Variants:

- float32: float32 policy, graph mode (`tf.function` without XLA);
- float32_xla: float32 policy, `jit_compile=True`;
- mixed_bfloat16: bfloat16 compute with float32 variables, graph mode;
- defaults: what a user gets without flags: the tree's `precision.DEFAULT_POLICY` (applied with
  `precision.use_policy`), train steps XLA-compiled per `trainer.DEFAULT_JIT_COMPILE`, sampling
  per `sampling.settings.DEFAULT_JIT_COMPILE`, encode through `vitvqgan.compiled_encode`.

Output, one line per job: `RESULT {"workload", "api", "vim_tf", "tensorflow", "defaults",
"variants": {name: {"times", "policy", "compute_dtype", "jit"[, "ops"]} or {"error"}}, "matmul":
{dtype: {"n", "times"}}}` (times in seconds per call). With `--profile_ops`, each graph-mode
variant is also run under TensorFlow's profiler after the timing: "ops" gives the seconds per
call of its matrix products, of all its ops, and of its costliest op types (`op_profile`).
"""

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import sys
import time

VARIANTS = ("float32", "float32_xla", "mixed_bfloat16", "defaults")

TINY_STACK = {"num_layers": 2, "num_heads": 4, "hidden_dim": 128, "mlp_dim": 512}
MID_STACK = {"num_layers": 4, "num_heads": 4, "hidden_dim": 256, "mlp_dim": 1024}
SS_STACK = {"num_layers": 8, "num_heads": 8, "hidden_dim": 512, "mlp_dim": 2048}
SMOKE_STACK = {"num_layers": 1, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}


def _stage1(image_size, patch_size, stack, codebook_size, code_dim, batch):
    return dict(
        image_size=image_size,
        patch_size=patch_size,
        stack=stack,
        codebook_size=codebook_size,
        code_dim=code_dim,
        batch=batch,
    )


def _prior(stack, grid_size, codebook_size, batch, num_classes=10):
    return dict(
        stack=stack,
        grid_size=grid_size,
        codebook_size=codebook_size,
        batch=batch,
        num_classes=num_classes,
    )


_SMOKE_STAGE1 = _stage1(16, 4, SMOKE_STACK, 16, 4, 4)
_S64 = (SMOKE_STACK, 32, 4, 2)
_SSS = (dict(SMOKE_STACK, hidden_dim=32), 32, 4, 2)

# name -> (kind, full sizes, smoke sizes). Kinds: "stage1" (a quantizer train step on a batch of
# images), "encode" (images -> tokens), "prior" (a prior train step on a batch of token
# sequences), "sampling" (a batch of whole class-conditional sequences with the KV cache).
WORKLOADS = {
    "stage1_tiny": ("stage1", _stage1(32, 4, TINY_STACK, 512, 32, 32), _SMOKE_STAGE1),
    "stage1_64": ("stage1", _stage1(64, 8, MID_STACK, 8192, 32, 16), _stage1(16, 8, *_S64)),
    "stage1_ss": ("stage1", _stage1(64, 8, SS_STACK, 8192, 32, 8), _stage1(16, 8, *_SSS)),
    "encode_tiny": ("encode", _stage1(32, 4, TINY_STACK, 512, 32, 256), _SMOKE_STAGE1),
    "prior_train": (
        "prior",
        _prior(dict(TINY_STACK, num_layers=4), 16, 512, 16),
        _prior(SMOKE_STACK, 4, 16, 2),
    ),
    "sampling_256": ("sampling", _prior(MID_STACK, 16, 512, 8), _prior(SMOKE_STACK, 3, 16, 2)),
    "sampling_1024": ("sampling", _prior(MID_STACK, 32, 512, 8), _prior(SMOKE_STACK, 4, 16, 2)),
}


def workload_config(name, smoke=False):
    """(kind, sizes dict) of workload `name` (its minuscule sizes with `smoke`)."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; valid: {list(WORKLOADS)}")
    kind, full, small = WORKLOADS[name]
    return kind, dict(small if smoke else full)


# ----------------------------------------------------------------------------- timing


def timed(fn, repeats=5):
    """Median seconds of `fn()` over `repeats` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def timed_turns(fns, repeats=5, warmup=True):
    """Seconds of every call of each `fns[name]()`, the callables run in turns (A, B, A, B, ...)
    after one warm-up call each (unless the caller made it) -> dict name -> list of `repeats`
    seconds."""
    if warmup:
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def timed_interleaved(fns, repeats=5):
    """Median seconds of each `fns[name]()`, timed in turns after a warm-up each (`timed_turns`).

    Args:
      fns: dict name -> zero-argument callable.

    Returns:
      dict name -> median seconds.
    """
    return {name: statistics.median(ts) for name, ts in timed_turns(fns, repeats).items()}


# ----------------------------------------------------------------------------- the tree's API


class Api:
    """What the benchmark needs from the `vim_tf` on the path, for either API."""

    def __init__(self):
        import keras
        import tensorflow as tf

        from vim_tf.training import optimizers, precision, trainer

        self.tf, self.keras, self.optimizers, self.precision = tf, keras, optimizers, precision
        self.new = importlib.util.find_spec("vim_tf.training.vqgan") is not None
        self.name = "new" if self.new else "old"
        self.default_policy = getattr(precision, "DEFAULT_POLICY", "float32")
        self.train_jit = getattr(trainer, "DEFAULT_JIT_COMPILE", False)
        self.sampling_jit = False
        if importlib.util.find_spec("vim_tf.sampling.settings") is not None:
            from vim_tf.sampling import settings

            self.sampling_jit = getattr(settings, "DEFAULT_JIT_COMPILE", False)

    def defaults(self):
        return {
            "policy": self.default_policy,
            "train_jit_compile": self.train_jit,
            "sampling_jit_compile": self.sampling_jit,
        }

    @contextlib.contextmanager
    def policy(self, name):
        """The global Keras dtype policy `name` for the block (the tree's `use_policy` if any)."""
        if hasattr(self.precision, "use_policy"):
            with self.precision.use_policy(name):
                yield
            return
        previous = self.keras.config.dtype_policy()
        self.keras.config.set_dtype_policy(name)
        try:
            yield
        finally:
            self.keras.config.set_dtype_policy(previous)

    def compute_dtype(self, policy):
        """The dtype the matmuls of `policy` run in (the dense-matmul peak they are held to)."""
        if hasattr(self.precision, "resolve"):
            policy = self.precision.resolve(policy)
        if policy == "bfloat16_matmuls":
            return "bfloat16"
        return self.keras.DTypePolicy(policy).compute_dtype

    def step_jit(self, variant):
        """(policy, jit_compile) of a train-step variant (no discriminator in these steps)."""
        if variant != "defaults":
            return _fixed_variant(variant)
        mode = self.train_jit
        if mode not in (True, False, "except_adversarial"):
            raise ValueError(f"unknown trainer.DEFAULT_JIT_COMPILE {mode!r}")
        return self.default_policy, bool(mode)

    def _opt(self):
        return self.optimizers.make_optimizer(learning_rate=1e-4)

    def quantizer(self, cfg):
        """A stage-1 (network, trainable model), built with its generator optimizer, under the
        current dtype policy."""
        from vim_tf.models.vitvqgan import ViTVQGAN

        net_args = dict(
            image_size=cfg["image_size"],
            patch_size=cfg["patch_size"],
            encoder=cfg["stack"],
            decoder=cfg["stack"],
            codebook_size=cfg["codebook_size"],
            code_dim=cfg["code_dim"],
        )
        if self.new:
            from vim_tf.training.vqgan import VQGANTraining

            network = ViTVQGAN(**net_args)
            model = VQGANTraining(network, adversarial_weight=0.0)
            model.build_all()
            model.compile_optimizers({"generator": self._opt()})
        else:
            model = network = ViTVQGAN(**net_args, adversarial_weight=0.0)
            model.build_all()
            model.compile(generator=self._opt())
        model.build_optimizers()
        return network, model

    def prior(self, cfg, train):
        """A prior (network, trainable model or None), dropout 0, under the current policy."""
        from vim_tf.models.vim import VIM

        network = VIM(
            **cfg["stack"],
            grid_size=cfg["grid_size"],
            codebook_size=cfg["codebook_size"],
            dropout=0.0,
            num_classes=cfg["num_classes"],
        )
        network.build()
        if not train:
            return network, None
        if self.new:
            from vim_tf.training.prior import PriorTraining

            model = PriorTraining(network)
            model.compile(optimizer=self._opt())
        else:
            model = network
            model.compile(prior=self._opt())
        model.build_optimizers()
        return network, model

    def compiled_encode(self, network):
        from vim_tf.models import vitvqgan

        if hasattr(vitvqgan, "compiled_encode"):
            return vitvqgan.compiled_encode(network)
        return self.tf.function(network.encode)

    def sample_fn(self, prior):
        """class_ids [B] -> tokens [B, g, g], the whole sequence with the KV cache (seed 0)."""
        if self.new:
            from vim_tf.sampling import decoding

            return lambda ids: decoding.sample_tokens(prior, ids, 0, use_cache=True)
        return lambda ids: prior.sample_tokens(ids, 0, use_cache=True)


def _fixed_variant(variant):
    return {
        "float32": ("float32", False),
        "float32_xla": ("float32", True),
        "mixed_bfloat16": ("mixed_bfloat16", False),
    }[variant]


# ----------------------------------------------------------------------------- workloads


def _sync(tf, x):
    return tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, x)


def _train_step_fn(api, kind, cfg, variant):
    """(zero-argument callable running one train step, policy, jit) of a variant."""
    tf = api.tf
    policy, jit = api.step_jit(variant)
    with api.policy(policy):
        batch = cfg["batch"]
        if kind == "stage1":
            _, model = api.quantizer(cfg)
            size = cfg["image_size"]
            data = {"image": tf.random.uniform((batch, size, size, 3))}
        else:
            network, model = api.prior(cfg, train=True)
            shape = (batch, network.seq_len)
            data = {"tokens": tf.random.uniform(shape, 0, cfg["codebook_size"], tf.int32)}
        data["label"] = tf.range(batch, dtype=tf.int32) % 10
        step = tf.function(model.train_step, jit_compile=jit)
        fn = lambda: _sync(tf, step(data))  # noqa: E731
        fn()  # traced (and compiled) under the variant's policy
    return fn, policy, jit


def _encode_fn(api, cfg, variant):
    tf = api.tf
    # The encode tool sets no training policy: its defaults are compiled_encode's own.
    policy = "float32" if variant == "defaults" else _fixed_variant(variant)[0]
    with api.policy(policy):
        network, _ = api.quantizer(cfg)
        size = cfg["image_size"]
        images = tf.random.uniform((cfg["batch"], size, size, 3))
        if variant == "defaults":
            encode, jit = api.compiled_encode(network), "compiled_encode"
        else:
            jit = _fixed_variant(variant)[1]
            encode = tf.function(network.encode, jit_compile=jit)
        fn = lambda: encode(images).numpy()  # noqa: E731
        fn()
    return fn, policy, jit


def _sampling_fn(api, cfg, variant):
    tf = api.tf
    if variant == "defaults":
        # The sampling tools set no training policy (float32); XLA per the sampling default.
        policy, jit = "float32", api.sampling_jit
    else:
        policy, jit = _fixed_variant(variant)
    with api.policy(policy):
        prior, _ = api.prior(cfg, train=False)
        ids = tf.range(cfg["batch"], dtype=tf.int32) % cfg["num_classes"]
        sample = tf.function(api.sample_fn(prior), jit_compile=jit)
        fn = lambda: sample(ids).numpy()  # noqa: E731
        fn()
    return fn, policy, jit


def variant_fn(api, kind, cfg, variant):
    """(zero-argument callable, policy, jit) of one variant of a workload."""
    if kind in ("stage1", "prior"):
        return _train_step_fn(api, kind, cfg, variant)
    if kind == "encode":
        return _encode_fn(api, cfg, variant)
    return _sampling_fn(api, cfg, variant)


def _error_text(e):
    """The exception's type and the last lines of its message (a traced error's cause is last)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {' / '.join(lines[-3:])}"[:600]


def matmul_fn(tf, n, dtype):
    """A zero-argument callable running one dense n x n matmul (2 n^3 FLOPs) in `dtype`."""
    a = tf.cast(tf.random.normal((n, n)), dtype)
    b = tf.cast(tf.random.normal((n, n)), dtype)
    fn = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)))
    fn().numpy()  # traced
    return lambda: fn().numpy()


# Op types of the matrix products (TensorFlow's and oneDNN's kernels of them).
MATMUL_OPS = frozenset(
    "MatMul BatchMatMul BatchMatMulV2 BatchMatMulV3 _MklMatMul _MklBatchMatMul _MklBatchMatMulV2 "
    "_MklFusedMatMul _MklNativeFusedMatMul _FusedMatMul _MklFusedBatchMatMulV2 Einsum "
    "_MklEinsum".split()
)


def op_times(xspace_bytes):
    """Seconds per op type summed over a profile's TensorFlow op events.

    Args:
      xspace_bytes: a serialized XSpace (the profiler's `*.xplane.pb`).

    Returns:
      dict op type -> seconds, from the host's executor threads (`tf_Compute` lines), where each
      op event is named `<node name>:<op type>`. An XLA-compiled function is one op there.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(xspace_bytes)
    totals = {}
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if ":" not in name or "::" in name:
                    continue  # executor bookkeeping, not an op
                op = name.rsplit(":", 1)[1]
                totals[op] = totals.get(op, 0.0) + event.duration_ps * 1e-12
    return totals


def op_profile(tf, fn, calls=3, top=8):
    """Where the time of `fn()` goes: TensorFlow's profiler over `calls` calls.

    Returns:
      {"calls", "matmul_seconds", "op_seconds" (per call: the matrix products, and every op;
      ops on the two executor threads overlap, so op_seconds can exceed the wall time),
      "top": {op type: seconds per call} of the `top` costliest op types}.
    """
    import glob
    import shutil
    import tempfile

    logdir = tempfile.mkdtemp(prefix="vim_tf_profile_")
    try:
        tf.profiler.experimental.start(logdir)
        try:
            for _ in range(calls):
                fn()
        finally:
            tf.profiler.experimental.stop()
        totals = {}
        for path in glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")):
            with open(path, "rb") as f:
                for op, sec in op_times(f.read()).items():
                    totals[op] = totals.get(op, 0.0) + sec
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return {
        "calls": calls,
        "matmul_seconds": sum(v for k, v in totals.items() if k in MATMUL_OPS) / calls,
        "op_seconds": sum(totals.values()) / calls,
        "top": {k: v / calls for k, v in ranked},
    }


def run_job(api, workload, variants, repeats, smoke=False, matmul_n=2048, profile=False):
    """Builds the variants of `workload`, times them in turns with the matmul peaks of their
    compute dtypes -> the job's result dict (see the module docstring)."""
    kind, cfg = workload_config(workload, smoke)
    fns, info = {}, {}
    for variant in variants:
        try:
            fn, policy, jit = variant_fn(api, kind, cfg, variant)
        except Exception as e:  # a variant the tree cannot run is reported, not fatal
            info[variant] = {"error": _error_text(e)}
            continue
        fns[variant] = fn
        dtype = api.compute_dtype(policy)
        info[variant] = {"policy": policy, "compute_dtype": dtype, "jit": jit}
        if f"matmul_{dtype}" not in fns:
            fns[f"matmul_{dtype}"] = matmul_fn(api.tf, matmul_n, dtype)
    # Every callable was called once when it was made (tracing, compiling): the warm-up.
    times = timed_turns(fns, repeats, warmup=False)
    matmul = {}
    for name, ts in times.items():
        if name.startswith("matmul_"):
            matmul[name[len("matmul_") :]] = {"n": matmul_n, "times": ts}
        else:
            info[name]["times"] = ts
    if profile:
        for name in info:
            if name in fns and not info[name]["jit"]:  # an XLA cluster has no op breakdown
                info[name]["ops"] = op_profile(api.tf, fns[name], calls=max(2, repeats // 2))
    return {"workload": workload, "kind": kind, "variants": info, "matmul": matmul}


def _check_tree(tree):
    import vim_tf

    found = os.path.realpath(os.path.dirname(os.path.dirname(vim_tf.__file__)))
    if tree and found != os.path.realpath(tree):
        raise SystemExit(f"vim_tf was imported from {found}, not from --tree={tree}")
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", default="", help="the source tree vim_tf must come from")
    parser.add_argument("--workloads", required=True, help=f"comma-separated: {list(WORKLOADS)}")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {list(VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=8, help="timed calls per variant")
    parser.add_argument("--matmul_n", type=int, default=2048, help="size of the peak matmul")
    parser.add_argument("--smoke", action="store_true", help="minuscule sizes (tests)")
    parser.add_argument(
        "--profile_ops", action="store_true", help="also profile each graph-mode variant's ops"
    )
    args = parser.parse_args(argv)
    workloads, variants = args.workloads.split(","), args.variants.split(",")
    for name in workloads:
        workload_config(name)
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise SystemExit(f"unknown variants {bad}; valid: {list(VARIANTS)}")
    found = _check_tree(args.tree)
    import keras

    api = Api()
    for workload in workloads:
        keras.utils.set_random_seed(0)
        result = run_job(
            api, workload, variants, args.repeats, args.smoke, args.matmul_n, args.profile_ops
        )
        result.update(
            api=api.name, vim_tf=found, tensorflow=api.tf.__version__, defaults=api.defaults()
        )
        print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    # Run by path: this file's folder would shadow nothing, but keep the path to the tree only.
    if sys.path and os.path.realpath(sys.path[0]) == os.path.dirname(os.path.realpath(__file__)):
        sys.path.pop(0)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
