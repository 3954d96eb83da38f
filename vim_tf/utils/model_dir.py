"""What a model dir holds besides checkpoints: its kind and Keras config, and how to restore it."""

import json
import os

import tensorflow as tf

MODEL_INFO_FILE = "model_info.json"
# The Keras config of the model: rebuilds it without gin (a prior loads its quantizer this way).
MODEL_CONFIG_FILE = "model_config.json"


def write_json(path, obj):
    """Writes JSON atomically (temp file + rename): a crash never leaves half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def write_model_info(model_dir, info):
    write_json(os.path.join(model_dir, MODEL_INFO_FILE), info)


def read_model_info(model_dir, kind=None):
    """The dir's model_info.json; with `kind`, also checks the model is of that kind."""
    path = os.path.join(model_dir, MODEL_INFO_FILE)
    if not os.path.exists(path):
        raise ValueError(
            f"{model_dir!r} holds no {MODEL_INFO_FILE}: not a trained vim_tf model dir"
        )
    with open(path) as f:
        info = json.load(f)
    if kind is not None and info.get("kind") != kind:
        raise ValueError(f"{model_dir!r} holds a {info.get('kind')!r} model, not a {kind!r}")
    return info


def read_model_config(model_dir):
    path = os.path.join(model_dir, MODEL_CONFIG_FILE)
    if not os.path.exists(path):
        raise ValueError(f"{model_dir!r} holds no {MODEL_CONFIG_FILE}: not a trained vim_tf model")
    with open(path) as f:
        return json.load(f)


def restore_latest(model, model_dir, checkpoint=None):
    """Restores the newest checkpoint of `model_dir` (or `checkpoint`) into a built model;
    returns its path.

    Only the model's own variables are required; optimizer state and training-only parts (the
    discriminator of a quantizer loaded for inference) may be absent from `model`.
    """
    latest = checkpoint or tf.train.latest_checkpoint(model_dir)
    if latest is None:
        raise ValueError(
            f"no checkpoint in {model_dir!r}: train the model first (tools/train.py "
            "--model_dir=...) or point at the dir that holds its ckpt-* files"
        )
    status = tf.train.Checkpoint(model=model).restore(latest)
    status.expect_partial()
    status.assert_existing_objects_matched()
    return latest
