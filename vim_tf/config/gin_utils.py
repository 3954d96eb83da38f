"""gin plumbing: finding configs, parsing flags, and the config saved in every model dir.

The gin configs ship inside the package (`vim_tf.configs`, the repository's gin/ folder) and are
found as package resources: `--gin_file` and `include` take a path relative to that folder
('experiments/digits_vim.gin'), the same with the folder name ('gin/experiments/...'), or a
plain file name ('digits_vim.gin'), from any working directory; a real file path is read as is.

A model dir holds `config.gin` (every binding in force when training started, re-parseable on
its own) and `operative_config.gin` (the bindings training actually used, gin's record). Tools
that act on a trained model re-read `config.gin`, so users never repeat `--gin_file`.
"""

import datetime
import importlib
import importlib.metadata
import importlib.resources
import logging as std_logging
import os
import posixpath
import re
import shlex
import sys

import gin
from absl import logging

from vim_tf.utils import fs

CONFIG_FILE = "config.gin"
OPERATIVE_CONFIG_FILE = "operative_config.gin"
COMMAND_FILE = "command.txt"

# Modules that register gin configurables; imported before any parsing.
_CONFIGURABLE_MODULES = (
    "vim_tf.data.input_pipeline",
    "vim_tf.data.tokens",
    "vim_tf.eval.classifier_eval",
    "vim_tf.eval.linear_probe",
    "vim_tf.eval.prior_eval",
    "vim_tf.eval.quantizer_eval",
    "vim_tf.losses.adversarial",
    "vim_tf.losses.reconstruction",
    "vim_tf.models.classifier",
    "vim_tf.models.discriminator",
    "vim_tf.models.quantizer",
    "vim_tf.models.vit",
    "vim_tf.models.vim",
    "vim_tf.models.vitvqgan",
    "vim_tf.training.classifier",
    "vim_tf.training.optimizers",
    "vim_tf.training.precision",
    "vim_tf.training.prior",
    "vim_tf.training.trainer",
    "vim_tf.training.vqgan",
)


_lookup_registered = False


def _remote_file_exists(path):
    return fs.is_remote(path) and fs.exists(path)


# gin opens files with the builtin open(); a model dir's config.gin on gs:// (or any remote file
# system) is read through tf.io.gfile instead.
gin.config.register_file_reader(fs.open, _remote_file_exists)


class _GinResourceLookupFilter(std_logging.Filter):
    """Drops gin's package-resource lookups from the log.

    gin tries every include first as a file inside a Python package and logs each miss on the
    root logger at ERROR level ("Path not found: models/vim_tiny.gin") before vim_tf's reader
    finds the shipped config: lines that read as failures when nothing failed.
    """

    def filter(self, record):
        return not record.pathname.endswith(os.path.join("gin", "resource_reader.py"))


# The gin configs ship inside the package as this data-only subpackage (vim_tf/configs; the
# repository's top-level gin/ is a link to it, for commands written `--gin_file=gin/...`).
CONFIG_PACKAGE = "vim_tf.configs"
_REPO_CONFIG_FOLDER = "gin"


def config_root():
    """The shipped gin configs: the package resource `vim_tf.configs`, a Traversable folder.

    It has no `__init__.py` (a namespace package inside vim_tf): the repository's gin/ link
    must not turn into a package that shadows gin-config for code run from the repository root.
    """
    return importlib.resources.files(CONFIG_PACKAGE)


def shipped_configs():
    """Every shipped gin config, as '/'-separated names relative to the config folder, sorted
    ('datasets/digits.gin', ..., 'experiments/digits_vim.gin', ..., 'models/vim_base.gin')."""
    names = []

    def walk(folder, prefix):
        for child in folder.iterdir():
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(".gin"):
                names.append(prefix + child.name)

    walk(config_root(), "")
    return sorted(names)


def _shipped_path(name):
    """The file-system path of the shipped config `name`, or None.

    `name` is relative to the config folder ('experiments/digits_vim.gin'), may start with the
    repository's folder name ('gin/experiments/digits_vim.gin'), or is a plain file name
    ('digits_vim.gin') that exactly one shipped config has.
    """
    if not name or os.path.isabs(name) or "://" in name:
        return None
    rel = posixpath.normpath(name.replace(os.sep, "/"))
    if rel.startswith(f"{_REPO_CONFIG_FOLDER}/"):
        rel = rel[len(_REPO_CONFIG_FOLDER) + 1 :]
    if rel.startswith("../"):
        return None
    root = config_root()
    resource = root.joinpath(rel)
    if resource.is_file():
        return os.fspath(resource)
    if "/" not in rel:
        matches = [n for n in shipped_configs() if posixpath.basename(n) == rel]
        if len(matches) == 1:
            return os.fspath(root.joinpath(matches[0]))
    return None


def resolve_gin_file(name):
    """The path gin reads for a `--gin_file` value.

    An existing file (relative to the working directory, or absolute) and a URL (`gs://...`)
    are used as given. Otherwise `name` is looked up among the configs shipped with vim_tf:
    'experiments/digits_vitvqgan.gin', 'gin/experiments/digits_vitvqgan.gin' and
    'digits_vitvqgan.gin' all name the same shipped config, from any working directory.

    Raises:
      ValueError: no such file; the message lists the shipped configs.
    """
    if "://" in name or os.path.isfile(name):
        return name
    path = _shipped_path(name)
    if path is not None:
        return path
    shipped = shipped_configs()
    same_name = [n for n in shipped if posixpath.basename(n) == posixpath.basename(name)]
    hint = f" (several shipped configs are named so: {same_name})" if len(same_name) > 1 else ""
    raise ValueError(
        f"gin file not found: {name!r} is neither a file (relative to the working directory "
        f"{os.getcwd()}) nor a config shipped with vim_tf{hint}. Shipped configs (give the name "
        f"relative to the config folder, or the file name alone): {', '.join(shipped)}"
    )


def _open_shipped(name):
    return open(_shipped_path(name))


def _is_shipped(name):
    try:
        return _shipped_path(name) is not None
    except ValueError:  # The configs are not installed: nothing is shipped.
        return False


def register_configurables():
    for name in _CONFIGURABLE_MODULES:
        importlib.import_module(name)
    global _lookup_registered
    if not _lookup_registered:
        # gin reads an `include` with the first reader that finds it: a file relative to the
        # working directory first (gin's own), then a shipped config by the names
        # `resolve_gin_file` accepts.
        gin.config.register_file_reader(_open_shipped, _is_shipped)
        std_logging.getLogger().addFilter(_GinResourceLookupFilter())
        _lookup_registered = True


def parse(gin_files=(), gin_bindings=(), finalize=True):
    """Parses gin files and bindings after registering every configurable.

    Each file is found as `resolve_gin_file` says (a missing one raises ValueError listing the
    shipped configs). Unknown configurables or parameters raise ValueError naming the file and
    line.
    """
    register_configurables()
    paths = [resolve_gin_file(f) for f in gin_files]
    logging.info("gin files: %s", list(gin_files))
    if paths != list(gin_files):
        logging.info("gin files read: %s", paths)
    logging.info("gin bindings: %s", list(gin_bindings))
    try:
        gin.parse_config_files_and_bindings(paths, list(gin_bindings), finalize_config=finalize)
    except ValueError as e:
        raise _with_valid_parameters(e) from e
    except OSError as e:
        if not str(e).startswith("Unable to open file"):
            raise
        # A missing `include`: gin names the file; say where includes are looked up.
        raise ValueError(
            f"{e}\nAn include names a file relative to the working directory or a config "
            f"shipped with vim_tf: {', '.join(shipped_configs())}"
        ) from e
    check_keras_bindings()


_UNKNOWN_PARAMETER = re.compile(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'")


def _with_valid_parameters(error):
    """gin's unknown-parameter error, plus the parameters the configurable does take."""
    import inspect

    message = str(error)
    match = _UNKNOWN_PARAMETER.search(message)
    if not match:
        return error
    configurable = gin.config._REGISTRY.get_match(match.group(1))  # pylint: disable=protected-access
    if configurable is None:
        return error
    fn = configurable.wrapped
    try:
        sig = inspect.signature(fn.__init__ if inspect.isclass(fn) else fn)
    except (TypeError, ValueError):
        return error
    hidden = set(configurable.denylist or ()) | {"self"}
    valid = sorted(
        name
        for name, p in sig.parameters.items()
        if name not in hidden and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    )
    if configurable.allowlist:
        valid = [name for name in valid if name in configurable.allowlist]
    first, _, rest = message.partition("\n")
    return ValueError(
        f"{first} Valid parameters of {match.group(1)}: {valid}" + (f"\n{rest}" if rest else "")
    )


# Keyword arguments every Keras layer accepts through **kwargs.
_KERAS_KWARGS = {"name", "dtype", "trainable", "autocast", "input_shape", "input_dim"}


def check_keras_bindings():
    """Rejects bindings of unknown parameters of registered Keras classes.

    gin accepts any parameter name for a class whose __init__ takes **kwargs (every Keras layer),
    so a typo would only surface at construction, after the data is prepared; this check makes
    it fail at parse time, naming the parameter and the valid ones.
    """
    import inspect

    # gin keeps bindings and its registry in module globals; there is no public iterator.
    config, registry = gin.config._CONFIG, gin.config._REGISTRY  # pylint: disable=protected-access
    for (scope, selector), params in config.items():
        configurable = registry.get_match(selector)
        if configurable is None or not inspect.isclass(configurable.wrapped):
            continue
        cls = configurable.wrapped
        sig = inspect.signature(cls.__init__)
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            continue
        valid = {n for n in sig.parameters if n not in ("self", "kwargs")} | _KERAS_KWARGS
        for name in params:
            if name not in valid:
                # The short name users write (`ViTVQGAN`), not gin's full module path.
                short = configurable.name or selector
                where = f"{scope}/{short}" if scope else short
                raise ValueError(
                    f"unknown gin parameter {where}.{name}: {cls.__name__} takes "
                    f"{sorted(valid - _KERAS_KWARGS)}"
                )


def bound(parameter):
    """The value gin binds to `parameter` ('Class.param' or '%MACRO'), or None when unbound."""
    try:
        value = gin.query_parameter(parameter)
    except ValueError:
        return None
    # A macro (`%TOKEN_DIR`) comes back as a reference; calling it gives its value.
    if isinstance(value, gin.config.ConfigurableReference) and value.configurable.name == "macro":
        value = value.scoped_configurable_fn()
    return value


def save_config(model_dir):
    """Writes the full parsed config and appends the command line to the model dir (local or any
    file system `vim_tf.utils.fs` reaches)."""
    fs.makedirs(model_dir)
    fs.write_text(fs.join(model_dir, CONFIG_FILE), gin.config_str())
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    fs.append_text(
        fs.join(model_dir, COMMAND_FILE), f"# {stamp}\n{shlex.join([sys.executable] + sys.argv)}\n"
    )


def save_operative_config(model_dir):
    fs.write_text(fs.join(model_dir, OPERATIVE_CONFIG_FILE), gin.operative_config_str())


def load_model_dir_config(model_dir, extra_bindings=()):
    """Re-parses the config a model was trained with (the model dir may be remote)."""
    path = fs.join(model_dir, CONFIG_FILE)
    if not fs.exists(path):
        raise ValueError(
            f"{model_dir!r} holds no {CONFIG_FILE}: it is not a vim_tf model dir (train one with "
            "tools/train.py --gin_file=... --model_dir=DIR)"
        )
    gin.clear_config()
    parse([path], extra_bindings)
