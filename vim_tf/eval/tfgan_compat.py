"""The one place that loads TF-GAN's evaluation math (FID, Inception/classifier score, KID).

Why this module exists: `import tensorflow_gan` fails on TensorFlow >= 2.16, because the package
`__init__` imports TF-GAN's Estimator code and `tf.estimator` is gone (upstream issues
tensorflow/gan#55 and #59, still open). The evaluation math in
`tensorflow_gan/python/eval/classifier_metrics.py` itself only needs `tensorflow`,
`tensorflow_probability` and its sibling `eval_utils.py`, and works on TF 2.21.

So instead of importing the package, this module:

1. finds the installed `tensorflow_gan` folder with `importlib.util.find_spec` (which locates a
   top-level package without executing its `__init__`);
2. registers empty placeholder modules for `tensorflow_gan`, `tensorflow_gan.python` and
   `tensorflow_gan.python.eval` in `sys.modules`, whose `__path__` points at the installed folders;
3. imports `tensorflow_gan.python.eval.classifier_metrics` through the normal import system, which
   then finds `classifier_metrics.py` and its own import, `eval_utils.py`, in those folders.

If anything goes wrong (TF-GAN missing, a different TF-GAN version with other imports or without the
functions `vim_tf.eval.scores` calls), every `tensorflow_gan*` entry this attempt added is removed
from `sys.modules` again and a `RuntimeError` names the installed version and what is missing.

After a successful load the placeholders stay registered (the loaded module's own imports refer to
them). A later `import tensorflow_gan` elsewhere then returns the empty placeholder instead of
failing; asking it for anything other than the loaded submodules raises an `AttributeError` that
points here. If the real package was already imported (an older TF where that works), it is used
as is and nothing is registered.

Usage:

    from vim_tf.eval import tfgan_compat
    cm = tfgan_compat.classifier_metrics()
    fid = cm.frechet_classifier_distance_from_activations(real, fake)
"""

import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys
import threading
import types

PACKAGE = "tensorflow_gan"
DISTRIBUTION = "tensorflow-gan"
# Placeholder parents, outermost first, with their folder relative to the package folder.
_PARENTS = (
    (PACKAGE, ()),
    (f"{PACKAGE}.python", ("python",)),
    (f"{PACKAGE}.python.eval", ("python", "eval")),
)
MODULE = f"{PACKAGE}.python.eval.classifier_metrics"

# Functions vim_tf.eval.scores calls: each entry is a group of alternatives, one must exist.
REQUIRED_FUNCTIONS = (
    ("frechet_classifier_distance_from_activations",),
    ("classifier_score_from_logits",),
    (
        "kernel_classifier_distance_and_std_from_activations",
        "kernel_classifier_distance_from_activations",
    ),
)

_lock = threading.Lock()
_cached = None


def classifier_metrics():
    """TF-GAN's `tensorflow_gan.python.eval.classifier_metrics` module, loaded once.

    Returns:
      The module object (cached after the first successful call).

    Raises:
      RuntimeError: TF-GAN is not installed, its evaluation module fails to import, or it lacks a
        function in `REQUIRED_FUNCTIONS`; the message names the installed version and the cause.
    """
    global _cached
    with _lock:
        if _cached is None:
            _cached = _load()
        return _cached


def installed_version():
    """The installed tensorflow-gan distribution version, or "unknown" / "not installed"."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "not installed" if _package_dir() is None else "unknown"


def _package_dir():
    """The installed `tensorflow_gan` folder, found without running its `__init__`, or None."""
    existing = sys.modules.get(PACKAGE)
    if existing is not None and getattr(existing, "__path__", None):
        return list(existing.__path__)[0]
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def _tfgan_modules():
    return {name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")}


def _placeholder(name, folder):
    """An empty package module `name` whose submodules are searched for in `folder`."""
    module = types.ModuleType(
        name,
        f"Placeholder registered by vim_tf.eval.tfgan_compat: the real `{name}` __init__ is not "
        "run (it fails on TF >= 2.16); only the evaluation math is loaded.",
    )
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [folder]
    module.__spec__ = spec
    module.__path__ = [folder]
    module.__package__ = name

    def __getattr__(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise AttributeError(
            f"{name}.{attr} is not available: `{name}` is a placeholder registered by "
            f"vim_tf.eval.tfgan_compat (TF-GAN's package __init__ fails on TF >= 2.16); only "
            f"{MODULE} is loaded, use vim_tf.eval.tfgan_compat.classifier_metrics()"
        )

    module.__getattr__ = __getattr__
    return module


def _import_classifier_metrics():
    """Registers the placeholder parents (unless the real package is imported) and imports the
    evaluation module. Callers clean up `sys.modules` on failure."""
    if PACKAGE not in sys.modules:
        root = _package_dir()
        if root is None:
            raise ModuleNotFoundError(
                f"no `{PACKAGE}` package on sys.path (install {DISTRIBUTION}==2.1.0)"
            )
        parent = None
        for name, parts in _PARENTS:
            module = sys.modules.get(name)
            if module is None:
                module = _placeholder(name, os.path.join(root, *parts))
                sys.modules[name] = module
            if parent is not None:
                setattr(parent, name.rsplit(".", 1)[1], module)
            parent = module
    return importlib.import_module(MODULE)


def _missing_functions(module):
    """Names of the `REQUIRED_FUNCTIONS` groups that `module` has no function for."""
    return [
        " or ".join(group)
        for group in REQUIRED_FUNCTIONS
        if not any(callable(getattr(module, fn, None)) for fn in group)
    ]


def _load():
    before = _tfgan_modules()
    try:
        try:
            module = _import_classifier_metrics()
        except Exception as e:
            raise RuntimeError(
                f"could not load TF-GAN's evaluation module {MODULE} (installed {DISTRIBUTION}: "
                f"{installed_version()}; vim_tf expects 2.1.0): {type(e).__name__}: {e}"
            ) from e
        missing = _missing_functions(module)
        if missing:
            raise RuntimeError(
                f"{MODULE} from {DISTRIBUTION} {installed_version()} (loaded from "
                f"{getattr(module, '__file__', '?')}) lacks {', '.join(missing)}; "
                "vim_tf expects tensorflow-gan 2.1.0"
            )
        return module
    except BaseException:
        # Leave no half-registered placeholders or partially imported submodules behind.
        for name in _tfgan_modules() - before:
            del sys.modules[name]
        raise
