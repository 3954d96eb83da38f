"""How every tool in tools/ runs its `main`: a user error is one line, not a traceback.

A bad flag value, a wrong or empty model dir, a bad gin binding or a missing dataset raises
ValueError, OSError (FileNotFoundError, ...) or SyntaxError (gin's parser) with a message that
says what is wrong. `run(main)` prints that message as `error: <message>` on stderr and exits
with status 2. The traceback is logged at debug level (`--verbosity=1` shows it); with the
environment variable VIM_TF_TRACEBACK=1 the exception propagates unchanged.

Importing this module does not import TensorFlow.
"""

import functools
import os
import sys

from absl import app, flags, logging

USER_ERRORS = (ValueError, OSError, SyntaxError)
EXIT_USER_ERROR = 2


def guard(main):
    """Wraps an absl `main(argv)` so user errors become `error: ...` and exit status 2."""

    @functools.wraps(main)
    def guarded(argv):
        try:
            return main(argv)
        except USER_ERRORS as e:
            if os.environ.get("VIM_TF_TRACEBACK"):
                raise
            logging.debug("traceback of the error below", exc_info=True)
            message = str(e) or type(e).__name__
            print(f"error: {message}", file=sys.stderr, flush=True)
            return EXIT_USER_ERROR

    return guarded


def run(main):
    """`absl.app.run(main)` with user errors reported as one line (see the module docstring)."""
    app.run(guard(main))


STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def define_strategy_flags(role):
    """Defines --strategy and --tpu (as tools/train.py has them); `role` says what the
    replicas share (e.g. 'each replica samples its share of every batch')."""
    flags.DEFINE_enum(
        "strategy",
        "default",
        list(STRATEGIES),
        f"tf.distribute strategy: {role}. multi_worker reads TF_CONFIG; the workers split the "
        "output shards and the chief writes the merged results.",
    )
    flags.DEFINE_string("tpu", None, "TPU address for --strategy=tpu ('local' on a TPU VM).")


def define_shard_flags(unit):
    """Defines --shard_size (`unit`s per output shard) and --overwrite."""
    flags.DEFINE_integer("shard_size", None, f"{unit} per output shard (default: see --help).")
    flags.DEFINE_bool(
        "overwrite",
        False,
        "Replace the shards of another run (other settings) in the output dir; without it such "
        "a dir is refused. Rerunning the same command resumes instead.",
    )


def define_sampling_flags():
    """Defines --temperature --top_k --top_p --cfg_scale --seed (the sampling settings shared by
    tools/sample.py and tools/evaluate.py); `sampling_settings()` reads them back as a dict."""
    flags.DEFINE_float("temperature", 1.0, "Sampling: softmax temperature (> 0).")
    flags.DEFINE_integer("top_k", 0, "Sampling: keep the k most likely tokens (0: off).")
    flags.DEFINE_float("top_p", 1.0, "Sampling: nucleus mass in (0, 1] (1: off).")
    flags.DEFINE_float(
        "cfg_scale",
        1.0,
        "Sampling: classifier-free guidance scale (1: off; needs a prior trained with "
        "PriorTraining.class_dropout > 0).",
    )
    flags.DEFINE_integer("seed", 0, "Sampling: random seed (the same seed, the same samples).")


def sampling_settings():
    """The flags of `define_sampling_flags` as {temperature, top_k, top_p, cfg_scale, seed}."""
    names = ("temperature", "top_k", "top_p", "cfg_scale", "seed")
    return {name: getattr(flags.FLAGS, name) for name in names}
