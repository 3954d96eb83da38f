"""What `tools/train.py` does: parse gin, pick the strategy, train."""

import os

import gin
from absl import logging

from vim_tf.config import gin_utils
from vim_tf.data import tokens
from vim_tf.training import distribute, trainer
from vim_tf.utils import model_dir as model_dir_lib


def run(model_dir, gin_files=(), gin_bindings=(), strategy="default", tpu=None, quantizer_dir=None):
    """Trains the experiment named by the gin files into `model_dir` (resuming if possible).

    Without gin files, a model dir that already holds a config is resumed with that config.
    """
    if not model_dir:
        raise ValueError("--model_dir is required")
    if not gin_files:
        if os.path.exists(os.path.join(model_dir, gin_utils.CONFIG_FILE)):
            gin_files = [os.path.join(model_dir, gin_utils.CONFIG_FILE)]
            logging.info("no --gin_file given: resuming with %s", gin_files[0])
        else:
            raise ValueError(
                "--gin_file is required for a new model dir (e.g. "
                "--gin_file=gin/experiments/digits_vitvqgan.gin)"
            )
    gin_utils.parse(gin_files, gin_bindings)
    strat = distribute.get_strategy(strategy, tpu)
    model_kwargs = {}
    if quantizer_dir:
        _check_same_quantizer(model_dir, quantizer_dir)
        token_dir = _bound("make_token_dataset.token_dir")
        if token_dir:
            tokens.check_token_dir(token_dir, model_dir_lib.read_model_info(quantizer_dir))
        model_kwargs["quantizer_dir"] = os.path.abspath(quantizer_dir)
    return trainer.train(model_dir, strategy=strat, model_kwargs=model_kwargs)


def _check_same_quantizer(model_dir, quantizer_dir):
    """A prior resumed with another quantizer must keep the token grid and vocabulary."""
    new = model_dir_lib.read_model_info(quantizer_dir, kind="quantizer")
    if not os.path.exists(os.path.join(model_dir, model_dir_lib.MODEL_INFO_FILE)):
        return
    old = model_dir_lib.read_model_info(model_dir)
    for key in ("grid_size", "codebook_size"):
        if key in old and old[key] != new[key]:
            raise ValueError(
                f"the prior in {model_dir!r} was trained on the quantizer "
                f"{old.get('quantizer_dir')!r} with {key} {old[key]}, but --quantizer_dir="
                f"{quantizer_dir!r} has {key} {new[key]}: use a matching quantizer or a new "
                "--model_dir"
            )


def _bound(parameter):
    """The value gin binds to `parameter`, or None when it is not bound."""
    try:
        value = gin.query_parameter(parameter)
    except ValueError:
        return None
    # A macro (`%TOKEN_DIR`) comes back as a reference; calling it gives its value.
    if isinstance(value, gin.config.ConfigurableReference) and value.configurable.name == "macro":
        value = value.scoped_configurable_fn()
    return value
