"""What `tools/train.py` does: parse gin, pick the strategy, train."""

import inspect

import gin
from absl import logging

from vim_tf.config import gin_utils
from vim_tf.data import tokens
from vim_tf.training import distribute, precision, trainer
from vim_tf.utils import fs
from vim_tf.utils import model_dir as model_dir_lib


def run(model_dir, gin_files=(), gin_bindings=(), strategy="default", tpu=None, quantizer_dir=None):
    """Trains the experiment named by the gin files into `model_dir` (resuming if possible).

    Without gin files, a model dir that already holds a config is resumed with that config.
    """
    if not model_dir:
        raise ValueError("--model_dir is required")
    if not gin_files:
        if fs.exists(fs.join(model_dir, gin_utils.CONFIG_FILE)):
            gin_files = [fs.join(model_dir, gin_utils.CONFIG_FILE)]
            logging.info("no --gin_file given: resuming with %s", gin_files[0])
        else:
            raise ValueError(
                "--gin_file is required for a new model dir (e.g. "
                "--gin_file=gin/experiments/digits_vitvqgan.gin)"
            )
    gin_utils.parse(gin_files, gin_bindings)
    # Before the strategy and the model exist: layers take the global dtype policy when created.
    # The previous policy comes back afterwards (the returned model keeps its layers' policies),
    # so evaluation in the same process (the main job) runs in float32.
    previous = precision.snapshot()
    precision.set_precision()
    try:
        strat = distribute.get_strategy(strategy, tpu)
        model_kwargs = {}
        if quantizer_dir:
            _check_same_quantizer(model_dir, quantizer_dir)
            model_dir_lib.check_model_dir(
                quantizer_dir,
                ("quantizer",),
                "--quantizer_dir must be a trained stage-1 model dir (a ViT-VQGAN)",
            )
            token_dir = gin_utils.bound("make_token_dataset.token_dir")
            if token_dir:
                tokens.check_token_dir(token_dir, model_dir_lib.read_model_info(quantizer_dir))
            model_kwargs["quantizer_dir"] = fs.abspath(quantizer_dir)
        _check_config(strat, quantizer_dir)
        return trainer.train(model_dir, strategy=strat, model_kwargs=model_kwargs)
    finally:
        precision.restore(previous)


def _check_same_quantizer(model_dir, quantizer_dir):
    """A prior resumed with another quantizer must keep the token grid and vocabulary."""
    new = model_dir_lib.read_model_info(quantizer_dir, kind="quantizer")
    if not fs.exists(fs.join(model_dir, model_dir_lib.MODEL_INFO_FILE)):
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


def _configured_class(parameter):
    """The class a gin parameter names (`@ViTVQGAN`), or None when unbound."""
    try:
        ref = gin.query_parameter(parameter)
    except ValueError:
        return None
    if isinstance(ref, gin.config.ConfigurableReference):
        return ref.configurable.wrapped
    return ref if inspect.isclass(ref) else None


def _model_class():
    """The training procedure class `create_model.model_class` names, or None when unbound."""
    return _configured_class("create_model.model_class")


def _network_class(cls):
    """The network class the procedure `cls` trains (`<cls>.network`), or None."""
    if cls is None or not _takes(cls, "network"):
        return None
    return _configured_class(f"{cls.__name__}.network")


def _takes(cls, parameter):
    return parameter in inspect.signature(cls.__init__).parameters


def _binding_name(parameter):
    """`parameter`, plus the macro it is bound to if any (`make_dataset.batch_size (%BATCH_SIZE)`)."""
    try:
        raw = gin.query_parameter(parameter)
    except ValueError:
        return parameter
    if isinstance(raw, gin.config.ConfigurableReference) and raw.configurable.name == "macro":
        return f"{parameter} (%{raw.scoped_selector.split('/')[0]})"
    return parameter


def _check_config(strategy, quantizer_dir):
    """Configuration errors that only show once several settings meet, raised before the model
    dir is touched: the model kind against --quantizer_dir, batch and image sizes, the dataset
    name, and the model's class count against the dataset's."""
    cls = _model_class()
    net = _network_class(cls)
    _check_quantizer_flag(cls, net, quantizer_dir)
    _check_sizes(strategy.num_replicas_in_sync)
    _check_dataset(net)


def _check_quantizer_flag(cls, net, quantizer_dir):
    """--quantizer_dir goes with a prior, which needs it unless its token grid is bound; the
    grid and vocabulary bound for the network must be the quantizer's (the prior passes the
    quantizer's to the network, which would otherwise silently override the bindings)."""
    if cls is None:
        return
    name = (net or cls).__name__
    if quantizer_dir and not _takes(cls, "quantizer_dir"):
        raise ValueError(
            f"--quantizer_dir is for a prior (VIM), but this experiment trains a {name} "
            f"(create_model.model_class = @{cls.__name__}): drop --quantizer_dir, or use a prior "
            "experiment such as gin/experiments/digits_vim.gin"
        )
    if not _takes(cls, "quantizer_dir"):
        return
    if not quantizer_dir:
        if gin_utils.bound(f"{name}.grid_size") is None:
            raise ValueError(
                f"{name} needs its quantizer: pass --quantizer_dir=DIR (a trained "
                "stage-1 model dir)"
            )
        return
    info = model_dir_lib.read_model_info(quantizer_dir, kind="quantizer")
    for key in ("grid_size", "codebook_size"):
        value = gin_utils.bound(f"{name}.{key}")
        if value is not None and value != info[key]:
            raise ValueError(
                f"{name}.{key} is {value} but the quantizer at {quantizer_dir!r} has "
                f"{key} {info[key]}: a prior must use its quantizer's token grid and "
                f"codebook (leave {name}.grid_size / {name}.codebook_size unset to follow it)"
            )


def _check_sizes(replicas):
    """Batch and image sizes are positive ints; the global batch splits over the replicas."""
    for fn in ("make_dataset", "make_token_dataset"):
        for name in ("batch_size", "image_size"):
            value = gin_utils.bound(f"{fn}.{name}")
            if value is None:
                continue
            label = _binding_name(f"{fn}.{name}")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a positive int, got {value!r}")
            if name == "batch_size" and value % replicas:
                raise ValueError(
                    f"{label} = {value} (the global batch) is not divisible by the "
                    f"{replicas} replicas of the strategy: use a multiple of {replicas}"
                )


def _check_dataset(cls):
    """The dataset name is valid and has no more classes than the network `cls`."""
    from vim_tf.data import input_pipeline

    dataset = gin_utils.bound("make_dataset.dataset")
    if dataset is None:
        return
    input_pipeline.check_dataset_name(dataset)
    if cls is None or not _takes(cls, "num_classes"):
        return
    num_classes = gin_utils.bound(f"{cls.__name__}.num_classes")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes <= 0:
        return  # unconditional, or a bad value the model's own check names
    data_classes = input_pipeline.dataset_info(dataset, gin_utils.bound("make_dataset.data_dir"))[
        "num_classes"
    ]
    if data_classes is None:
        logging.warning(
            "%s.num_classes = %d but dataset %r has no labels: every example gets class 0",
            cls.__name__,
            num_classes,
            dataset,
        )
    elif num_classes < data_classes:
        raise ValueError(
            f"{cls.__name__}.num_classes={num_classes} but dataset {dataset!r} has "
            f"{data_classes} classes (labels 0..{data_classes - 1}): set "
            f"{cls.__name__}.num_classes = {data_classes}"
        )
