"""Test helper: the trainer on a 2-replica MirroredStrategy vs. one device, same global batches.

Logical CPU devices can only be configured before TensorFlow initializes, so this runs in a fresh
process (tests/test_distribute.py starts it):

    python tests/distribute_check.py --case=quantizer_gan --output=/tmp/out.npz

It trains the tiny model of `--case` twice through `trainer.train` on the same fixed global
batches: once with the default (one-device) strategy, once with `MirroredStrategy` over two
logical CPU devices, each replica getting half of every global batch. It writes an npz with, for
each run (`single`, `mirrored`): the final model and optimizer variables (`<run>/var/<i>`), the
initial model variables (`<run>/init/<i>`), and the scalars the trainer logged to TensorBoard at
each step (`<run>/scalar/<tag>`, one value per step), the largest
difference between the two replicas' copies of any variable (`<run>/replica_spread`) and the
trainer's log lines (`<run>/log`).

Cases:
  quantizer_restart: stage 1, autoencoder phase, dead-code restarts on (every code is dead at
    step 1, so the first step re-seeds the codebook from the gathered global batch); replicas get
    contiguous halves.
  quantizer_gan: stage 1, adversarial phase from the first step (the discriminator trains at
    every step, with R1 at the first and third: r1_interval 2); replicas get strided halves
    (examples 0, 2, 4, ... and 1, 3, 5, ...). The discriminator's minibatch std-dev is computed
    per replica (as in StyleGAN2's multi-GPU training) over groups of examples i, i + B/G, ...;
    with strided halves each replica's group is exactly one group of the one-device batch, so
    the two runs must agree.
  prior: stage 2, a class-conditional VIM tokenizing images with a frozen quantizer, at a
    constant learning rate; contiguous halves.
Dropout is 0 and class dropout off in every case.
"""

import argparse
import ast
import json
import logging as py_logging
import os
import sys
import tempfile

import numpy as np

GLOBAL_BATCH = 8
NUM_REPLICAS = 2
STEPS = 3
IMAGE_SIZE = 16

_STACK = "{'num_layers': 1, 'num_heads': 2, 'hidden_dim': 16, 'mlp_dim': 32}"
_QUANTIZER = (
    f"IMAGE_SIZE = {IMAGE_SIZE}",
    f"BATCH_SIZE = {GLOBAL_BATCH}",
    "ViTVQGAN.patch_size = 4",
    f"ViTVQGAN.encoder = {_STACK}",
    f"ViTVQGAN.decoder = {_STACK}",
    "ViTVQGAN.codebook_size = 16",
    "ViTVQGAN.code_dim = 4",
    "VQGANTraining.discriminator = {'channel_base': 64, 'channel_max': 8, 'mbstd_group_size': 4}",
    "WarmupCosine.warmup_steps = 1",
)
CASES = {
    "quantizer_restart": (
        "gin/experiments/digits_vitvqgan.gin",
        _QUANTIZER + ("ViTVQGAN.restart_dead_codes = True", "VQGANTraining.disc_start_step = 100"),
        "contiguous",
    ),
    "quantizer_gan": (
        "gin/experiments/digits_vitvqgan.gin",
        _QUANTIZER
        + (
            "ViTVQGAN.restart_dead_codes = False",
            "VQGANTraining.disc_start_step = 0",
            "VQGANTraining.r1_interval = 2",
            "VQGANTraining.r1_gamma = 1.0",
        ),
        "strided",
    ),
    "prior": (
        "gin/experiments/digits_vim.gin",
        (
            f"IMAGE_SIZE = {IMAGE_SIZE}",
            f"BATCH_SIZE = {GLOBAL_BATCH}",
            "VIM.num_layers = 1",
            "VIM.num_heads = 2",
            "VIM.hidden_dim = 16",
            "VIM.mlp_dim = 32",
            "VIM.dropout = 0.0",
            "PriorTraining.class_dropout = 0.0",
            # A constant rate (a variable, mirrored under the strategy) instead of a schedule.
            "make_optimizer.learning_rate = 0.001",
        ),
        "contiguous",
    ),
}


def _split(batch, mode, replica):
    """Replica `replica`'s half of a global batch (a dict of arrays)."""
    if mode == "strided":
        return {k: v[replica::NUM_REPLICAS] for k, v in batch.items()}
    per = GLOBAL_BATCH // NUM_REPLICAS
    return {k: v[replica * per : (replica + 1) * per] for k, v in batch.items()}


def make_dataset_fn(batches, mode):
    """A trainer `dataset_fn` serving the fixed global `batches`, split per replica.

    With one input pipeline feeding two replicas, `distribute_datasets_from_function` hands the
    pipeline's consecutive elements to replica 0, 1, 0, 1, ...: the pipeline yields each global
    batch as its two halves in replica order.
    """
    import tensorflow as tf

    def dataset_fn(split="train", training=True, input_context=None, seed=None, **unused):
        del split, seed, unused
        if not training:
            return tf.data.Dataset.from_tensor_slices({k: v[None] for k, v in batches[0].items()})
        replicas = input_context.num_replicas_in_sync if input_context else 1
        if input_context is not None and input_context.num_input_pipelines != 1:
            raise ValueError("this helper feeds one input pipeline")
        if replicas == 1:
            elements = batches
        else:
            elements = [_split(b, mode, r) for b in batches for r in range(replicas)]
        stacked = {k: np.stack([e[k] for e in elements]) for k in elements[0]}
        return tf.data.Dataset.from_tensor_slices(stacked)

    return dataset_fn


def _fake_quantizer_dir(path):
    """A quantizer model dir (untrained, random weights) for the prior to tokenize with."""
    import gin
    import keras
    import tensorflow as tf

    from vim_tf.config import gin_utils
    from vim_tf.models.vitvqgan import ViTVQGAN
    from vim_tf.utils import model_dir as model_dir_lib

    gin_utils.register_configurables()
    gin.clear_config()
    keras.utils.set_random_seed(1)
    q = ViTVQGAN(
        image_size=IMAGE_SIZE,
        patch_size=4,
        encoder=ast.literal_eval(_STACK),
        decoder=ast.literal_eval(_STACK),
        codebook_size=16,
        code_dim=4,
    )
    q.build()
    model_dir_lib.write_model_info(path, dict(q.model_info(), kind="quantizer"))
    model_dir_lib.write_json(os.path.join(path, model_dir_lib.MODEL_CONFIG_FILE), q.get_config())
    tf.train.Checkpoint(model=q).save(os.path.join(path, "ckpt"))
    return path


def _scalars(model_dir):
    import tensorflow as tf

    out = {}
    for name in sorted(os.listdir(model_dir)):
        if not name.startswith("events.out.tfevents."):
            continue
        for event in tf.compat.v1.train.summary_iterator(os.path.join(model_dir, name)):
            for v in event.summary.value:
                if v.tag.startswith("train/") and v.HasField("tensor"):
                    value = float(tf.make_ndarray(v.tensor))
                    out.setdefault(v.tag, {})[int(event.step)] = value
                elif v.tag.startswith("train/") and v.HasField("simple_value"):
                    out.setdefault(v.tag, {})[int(event.step)] = float(v.simple_value)
    return out


def random_batches(steps, global_batch, image_size, seed=0):
    """`steps` fixed global batches of uniform images and digit labels (numpy)."""
    rng = np.random.default_rng(seed)
    return [
        {
            "image": rng.uniform(size=(global_batch, image_size, image_size, 3)).astype("float32"),
            "label": rng.integers(0, 10, size=(global_batch,)).astype("int32"),
        }
        for _ in range(steps)
    ]


def run_case(case, work_dir):
    """Trains `case` on one device and on two replicas; returns the npz contents."""
    import gin
    import keras
    import tensorflow as tf

    from vim_tf.config import gin_utils
    from vim_tf.training import trainer

    gin_file, bindings, mode = CASES[case]
    logged = []

    class Record(py_logging.Handler):  # the trainer's log lines ("... (global batch N, ...")
        def emit(self, record):
            logged.append(record.getMessage())

    py_logging.getLogger("absl").addHandler(Record())
    batches = random_batches(STEPS, GLOBAL_BATCH, IMAGE_SIZE)
    model_kwargs = {}
    if case == "prior":
        model_kwargs["quantizer_dir"] = _fake_quantizer_dir(os.path.join(work_dir, "quantizer"))

    cpus = tf.config.list_logical_devices("CPU")
    strategies = {
        "single": tf.distribute.get_strategy(),
        "mirrored": tf.distribute.MirroredStrategy([d.name for d in cpus[:NUM_REPLICAS]]),
    }
    out = {"num_replicas": np.array([s.num_replicas_in_sync for s in strategies.values()])}
    for run, strategy in strategies.items():
        gin.clear_config()
        gin_utils.parse([gin_file], list(bindings))
        keras.utils.set_random_seed(0)
        init = trainer.build_model(strategy, **model_kwargs)
        for i, w in enumerate(init.weights):
            out[f"{run}/init/{i}"] = w.numpy()
        del init
        keras.utils.set_random_seed(0)
        model_dir = os.path.join(work_dir, run)
        del logged[:]
        model = trainer.train(
            model_dir,
            strategy=strategy,
            dataset_fn=make_dataset_fn(batches, mode),
            train_steps=STEPS,
            checkpoint_every=STEPS,
            log_every=1,
            image_every=STEPS,
            model_kwargs=model_kwargs,
        )
        variables = list(model.weights)
        for name in model.optimizer_names:
            opt = getattr(model, f"{name}_optimizer", None)
            if opt is not None:
                variables += list(opt.variables)
        spread = 0.0
        for i, v in enumerate(variables):
            out[f"{run}/var/{i}"] = np.asarray(v.numpy())
            tf_var = getattr(v, "value", v)
            copies = strategy.experimental_local_results(tf_var)
            for c in copies[1:]:
                diff = np.abs(np.asarray(c.numpy(), np.float64) - np.asarray(copies[0].numpy()))
                spread = max(spread, float(diff.max()) if diff.size else 0.0)
        out[f"{run}/replica_spread"] = np.array(spread)
        out[f"{run}/log"] = np.array(logged)
        out[f"{run}/names"] = np.array([v.path for v in variables])
        for tag, by_step in _scalars(model_dir).items():
            out[f"{run}/scalar/{tag}"] = np.array([by_step[s] for s in sorted(by_step)])
            out[f"{run}/scalar_steps/{tag}"] = np.array(sorted(by_step))
    gin.clear_config()
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)

    import tensorflow as tf
    from absl import logging as absl_logging

    # Grappler's graph rewrites take most of the tracing time of these tiny steps (about half of
    # this helper's run time) and do not change what is computed; both runs skip them alike.
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    absl_logging.set_verbosity(absl_logging.INFO)
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * NUM_REPLICAS
    )
    with tempfile.TemporaryDirectory() as work_dir:
        out = run_case(args.case, work_dir)
    np.savez(args.output, **out)
    print(json.dumps({"case": args.case, "output": args.output}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
