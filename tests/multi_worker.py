"""Test helper: the train binary as one worker of a multi-worker run, dumping its weights at the end.

tests/test_distribute.py starts two of these on localhost, each with its own TF_CONFIG:

    TF_CONFIG='{"cluster": {"worker": ["localhost:P0", "localhost:P1"]},
                "task": {"type": "worker", "index": 0}}' \
    python tests/multi_worker.py --weights_out=w0.npz -- \
        --strategy=multi_worker --model_dir=DIR --gin_file=gin/experiments/digits_vitvqgan.gin ...

Everything after `--` goes to the train binary unchanged (its flags, its `main`). When training
returns, this writes what the worker ended with to `--weights_out`: the model's variables
(`var/<i>`, `name/<i>`), the optimizer step, the strategy name `train_lib.run` was given, and
the absl log lines (the trainer logs the global batch and the replica count). A non-chief
worker's weights exist nowhere else once training ends (its temporary dir under the model dir is
removed), hence this dump.
"""

import logging as py_logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv):
    if "--" not in argv or not argv[0].startswith("--weights_out="):
        raise SystemExit("usage: multi_worker --weights_out=FILE -- <vim_tf.bin.train flags>")
    weights_out = argv[0].split("=", 1)[1]
    train_argv = argv[argv.index("--") + 1 :]

    import numpy as np
    import tensorflow as tf
    from absl import logging

    from vim_tf.training import train_lib

    # Grappler's rewrites take much of the tracing time of a tiny step and change nothing that
    # is computed (as in tests/distribute_check.py).
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    logging.set_verbosity(logging.INFO)
    logged = []

    class Record(py_logging.Handler):
        def emit(self, record):
            logged.append(record.getMessage())

    py_logging.getLogger("absl").addHandler(Record())

    calls = []
    real_run = train_lib.run

    def run(*args, **kwargs):  # what the train binary calls; keeps the trained model
        model = real_run(*args, **kwargs)
        calls.append((args, kwargs, model))
        return model

    train_lib.run = run
    from vim_tf.bin import train as tool

    tool.FLAGS(["train", *train_argv])
    tool.main([])

    (args, kwargs, model) = calls[0]
    out = {
        "step": np.array(int(model.step.numpy())),
        "strategy": np.array(args[3] if len(args) > 3 else kwargs.get("strategy")),
        "log": np.array(logged),
    }
    for i, w in enumerate(model.weights):
        out[f"var/{i}"] = np.asarray(w.numpy())
        out[f"name/{i}"] = np.array(w.path)
    np.savez(weights_out, **out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
