"""What a model dir holds besides checkpoints: its kind and Keras config, and how to restore it.

A model dir may be local or on any file system TensorFlow reads (`gs://...`): every access goes
through `vim_tf.utils.fs`. Importing this module does not import TensorFlow, and neither does
checking a local dir, so the tools can check a model dir (exists, right kind, has a checkpoint)
and fail in a fraction of a second, before loading TF.
"""

import json
import os

from vim_tf.utils import fs

MODEL_INFO_FILE = "model_info.json"
# The Keras config of the model: rebuilds it without gin (a prior loads its quantizer this way).
MODEL_CONFIG_FILE = "model_config.json"
# The model kinds tools/train.py writes (`kind` in model_info.json).
KINDS = ("quantizer", "prior", "classifier")


def write_json(path, obj):
    """Writes JSON atomically (temp file + rename): a crash never leaves half a file."""
    fs.write_json(path, obj)


def write_model_info(model_dir, info):
    write_json(fs.join(model_dir, MODEL_INFO_FILE), info)


def _not_a_model_dir_hint(model_dir):
    """What a dir without model_info.json holds instead, as a hint for the error message."""
    names = set(fs.listdir(model_dir))
    if not names:
        return "it is empty"
    if "saved_model.pb" in names:
        return "it holds a SavedModel export (tools/evaluate.py takes those with --saved_model)"
    if "config.gin" in names:
        return "it holds a config.gin but training never got as far as building the model"
    shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
    return f"it holds {len(names)} other entries: {shown}"


def read_model_info(model_dir, kind=None):
    """The dir's model_info.json; with `kind`, also checks the model is of that kind.

    Raises:
      ValueError: the dir does not exist, is not a model dir, its model_info.json is damaged, or
        the model is of another kind. The message names the dir and what is wrong.
    """
    if not fs.isdir(model_dir):
        what = "is not a directory" if fs.exists(model_dir) else "does not exist"
        raise ValueError(f"model dir {model_dir!r} {what}: expected a trained vim_tf model dir")
    path = fs.join(model_dir, MODEL_INFO_FILE)
    if not fs.exists(path):
        raise ValueError(
            f"{model_dir!r} holds no {MODEL_INFO_FILE}: not a trained vim_tf model dir "
            f"({_not_a_model_dir_hint(model_dir)})"
        )
    try:
        info = fs.read_json(path)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): the model dir is damaged") from e
    if not isinstance(info, dict):
        raise ValueError(f"{path} is not a JSON object: the model dir is damaged")
    if kind is not None and info.get("kind") != kind:
        raise ValueError(f"{model_dir!r} holds a {info.get('kind')!r} model, not a {kind!r}")
    return info


def has_checkpoint(model_dir):
    """Whether `model_dir` holds at least one checkpoint (a `*.index` file)."""
    return bool(fs.glob(model_dir, "*.index"))


def check_model_dir(model_dir, kinds=None, purpose=None, need_checkpoint=True):
    """Checks a trained model dir before any work: it exists, is of one of `kinds` and (with
    `need_checkpoint`) holds a checkpoint. Cheap (no TensorFlow for a local dir); returns its
    model_info dict.

    Args:
      model_dir: the dir.
      kinds: accepted model kinds ("quantizer", "prior", "classifier"); None accepts any.
      purpose: what needs the dir (e.g. "tools/sample.py samples from a prior"), added to the
        wrong-kind message.
      need_checkpoint: also require a checkpoint.

    Raises:
      ValueError: with a message naming the dir and what is wrong with it.
    """
    if not model_dir:
        raise ValueError("no model dir given")
    model_dir = os.fspath(model_dir)
    info = read_model_info(model_dir)
    kind = info.get("kind")
    if kinds is not None and kind not in kinds:
        wanted = " or ".join(repr(k) for k in kinds)
        raise ValueError(
            f"{model_dir!r} holds a {kind!r} model, not a {wanted}"
            + (f": {purpose}" if purpose else "")
        )
    if need_checkpoint and not has_checkpoint(model_dir):
        raise ValueError(
            f"no checkpoint in {model_dir!r}: the {kind} model there has not saved one yet "
            "(train it with tools/train.py --model_dir=..., or wait for its first checkpoint)"
        )
    return info


def read_model_config(model_dir):
    path = fs.join(model_dir, MODEL_CONFIG_FILE)
    if not fs.exists(path):
        raise ValueError(f"{model_dir!r} holds no {MODEL_CONFIG_FILE}: not a trained vim_tf model")
    return fs.read_json(path)


def restore_latest(model, model_dir, checkpoint=None):
    """Restores the newest checkpoint of `model_dir` (or `checkpoint`) into a built model;
    returns its path.

    Only the model's own variables are required; optimizer state and training-only parts (the
    discriminator of a quantizer loaded for inference) may be absent from `model`.
    """
    import tensorflow as tf

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
