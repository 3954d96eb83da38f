"""Test program: every train step keeps the TPU contract (tests/test_tpu_contract.py runs it).

A TPU runs each replica's step as one XLA computation, and its cross-replica sum
(CrossReplicaSum) and all-gather take only TPU_DTYPES. Without a TPU, this program checks both
halves of that contract for every model kind and training phase:

1. Under a 2-replica MirroredStrategy over logical CPU devices, the production trainer
   (`trainer.train`) runs each case's steps while every cross-replica reduction and gather
   (`ReplicaContext.all_reduce` / `all_gather`, `StrategyExtended.reduce_to` /
   `batch_reduce_to`, the entries the models, the guard and Keras's optimizers go through) is
   checked against TPU_DTYPES.
2. Under one device, the trainer runs the same steps with `train.jit_compile=True`, so every
   phase's step is compiled by XLA (a step that XLA cannot compile, say a `py_function` or an
   op without an XLA kernel, fails there).

    python tests/tpu_contract_check.py --case=quantizer --output=/tmp/contract.json

writes {"case", "checked": {dtype: count}, "violations": [...], "xla_steps": N}. With
`--flag_dtype=int64` the guard's non-finite flag is summed as int64 (as it once was), which the
check must report; without it the code's own dtype is checked.
"""

import argparse
import collections
import json
import os
import sys
import tempfile

import numpy as np

# What a TPU's cross-replica sum and all-gather accept.
TPU_DTYPES = ("float16", "bfloat16", "float32", "float64", "int32", "uint32")
STEPS = 3
GLOBAL_BATCH = 8
IMAGE_SIZE = 16
_STACK = "{'num_layers': 1, 'num_heads': 2, 'hidden_dim': 16, 'mlp_dim': 32}"
_PRIOR = (
    "VIM.num_layers = 1",
    "VIM.num_heads = 2",
    "VIM.hidden_dim = 16",
    "VIM.mlp_dim = 32",
    "VIM.dropout = 0.1",
    "WarmupHoldExponential.warmup_steps = 1",
    "WarmupHoldExponential.decay_start = 2",
)
# case: (experiment, bindings, needs a quantizer). Together the cases cover every phase: the
# quantizer's autoencoder step (with dead-code restarts, which gather across replicas), its GAN
# step with and without R1 (disc_start_step 1, r1_interval 2: R1 at step 1, none at step 2), the
# priors with and without class dropout, and the classifier (random shifts, dropout).
CASES = {
    "quantizer": (
        "gin/experiments/digits_vitvqgan.gin",
        (
            "ViTVQGAN.patch_size = 4",
            f"ViTVQGAN.encoder = {_STACK}",
            f"ViTVQGAN.decoder = {_STACK}",
            "ViTVQGAN.codebook_size = 16",
            "ViTVQGAN.code_dim = 4",
            "VQGANTraining.discriminator = {'channel_base': 64, 'channel_max': 8, 'mbstd_group_size': 4}",
            "ViTVQGAN.restart_dead_codes = True",
            "VQGANTraining.disc_start_step = 1",
            "VQGANTraining.r1_interval = 2",
            "VQGANTraining.r1_gamma = 1.0",
            "WarmupCosine.warmup_steps = 1",
        ),
        False,
    ),
    "prior_class_dropout": (
        "gin/experiments/digits_vim.gin",
        _PRIOR + ("PriorTraining.class_dropout = 0.5",),
        True,
    ),
    "prior_unconditional": ("gin/experiments/digits_vim_uncond.gin", _PRIOR, True),
    "classifier": (
        "gin/experiments/digits_classifier.gin",
        (
            "ImageClassifier.channels = (8, 8)",
            "ImageClassifier.feature_dim = 16",
            "WarmupCosine.warmup_steps = 1",
        ),
        False,
    ),
}


class ReductionChecker:
    """Wraps the cross-replica entry points and records the dtype of everything they move."""

    def __init__(self):
        self.checked = collections.Counter()
        self.violations = []
        self._undo = []

    def _check(self, where, value):
        import tensorflow as tf

        for t in tf.nest.flatten(value):
            dtype = getattr(t, "dtype", None)
            if dtype is None:
                continue
            name = tf.as_dtype(dtype).name
            self.checked[name] += 1
            if name not in TPU_DTYPES:
                self.violations.append(f"{where}: {name} {getattr(t, 'name', '')}")

    def _wrap(self, cls, method, values_of):
        original = getattr(cls, method)
        checker = self

        def wrapped(self, *args, **kwargs):
            checker._check(f"{cls.__name__}.{method}", values_of(*args, **kwargs))
            return original(self, *args, **kwargs)

        setattr(cls, method, wrapped)
        self._undo.append((cls, method, original))

    def install(self):
        import tensorflow as tf

        self._wrap(tf.distribute.ReplicaContext, "all_reduce", lambda op, value, *a, **k: value)
        self._wrap(tf.distribute.ReplicaContext, "all_gather", lambda value, *a, **k: value)
        self._wrap(tf.distribute.StrategyExtended, "reduce_to", lambda op, value, *a, **k: value)
        self._wrap(
            tf.distribute.StrategyExtended,
            "batch_reduce_to",
            lambda op, pairs, *a, **k: [v for v, _ in pairs],
        )
        return self

    def uninstall(self):
        for cls, method, original in reversed(self._undo):
            setattr(cls, method, original)
        self._undo = []


def _dataset_fn(batches):
    import tensorflow as tf

    def dataset_fn(split, training, input_context=None, seed=0, cache=True):
        del split, training, seed, cache
        per_replica = GLOBAL_BATCH // (input_context.num_replicas_in_sync if input_context else 1)
        ds = tf.data.Dataset.from_tensor_slices(
            {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
        )
        if input_context is not None:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        return ds.batch(per_replica, drop_remainder=True).repeat()

    return dataset_fn


def run_case(case, work_dir, xla=True):
    import gin
    import tensorflow as tf

    import distribute_check
    from vim_tf.config import gin_utils
    from vim_tf.training import trainer

    gin_file, bindings, needs_quantizer = CASES[case]
    bindings = (f"IMAGE_SIZE = {IMAGE_SIZE}", f"BATCH_SIZE = {GLOBAL_BATCH}") + bindings
    batches = distribute_check.random_batches(STEPS, GLOBAL_BATCH, IMAGE_SIZE)
    model_kwargs = {}
    if needs_quantizer:
        model_kwargs["quantizer_dir"] = distribute_check._fake_quantizer_dir(
            os.path.join(work_dir, "quantizer")
        )
    cpus = tf.config.list_logical_devices("CPU")
    runs = {
        # (strategy, jit_compile, check reductions)
        "mirrored": (tf.distribute.MirroredStrategy([d.name for d in cpus[:2]]), False, True),
        "xla": (tf.distribute.get_strategy(), True, False),
    }
    if not xla:
        del runs["xla"]
    checker = ReductionChecker()
    xla_steps = 0
    for run, (strategy, jit_compile, check) in runs.items():
        gin.clear_config()
        gin_utils.parse([gin_file], list(bindings))
        if check:
            checker.install()
        try:
            model = trainer.train(
                os.path.join(work_dir, run),
                strategy=strategy,
                dataset_fn=_dataset_fn(batches),
                train_steps=STEPS,
                checkpoint_every=STEPS,
                log_every=1,
                image_every=STEPS,
                jit_compile=jit_compile,
                model_kwargs=model_kwargs,
            )
        finally:
            checker.uninstall()
        if jit_compile:
            xla_steps = int(model.step.numpy())
    gin.clear_config()
    return {
        "case": case,
        "checked": dict(checker.checked),
        "violations": checker.violations,
        "xla_steps": xla_steps,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument(
        "--flag_dtype",
        default=None,
        choices=("int32", "int64"),
        help="override the guard's flag dtype (default: the code's own)",
    )
    parser.add_argument("--no_xla", action="store_true", help="only the 2-replica dtype check")
    args = parser.parse_args(argv)

    import tensorflow as tf

    # Grappler's rewrites take much of the tracing time of these tiny steps and change nothing
    # that is checked here.
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from vim_tf.training import guard

    if args.flag_dtype:
        guard.FLAG_DTYPE = tf.as_dtype(args.flag_dtype)
    with tempfile.TemporaryDirectory() as work_dir:
        out = run_case(args.case, work_dir, xla=not args.no_xla)
    with open(args.output, "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
