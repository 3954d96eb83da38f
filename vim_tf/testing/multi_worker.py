"""Test helper: one worker of a MultiWorkerMirroredStrategy run, dumping its weights at the end.

tests/test_distribute.py starts two of these on localhost, each with its own TF_CONFIG:

    TF_CONFIG='{"cluster": {"worker": ["localhost:P0", "localhost:P1"]},
                "task": {"type": "worker", "index": 0}}' \
    python -m vim_tf.testing.multi_worker --model_dir=DIR --weights_out=w0.npz \
        --gin_file=gin/experiments/digits_vitvqgan.gin --gin_bindings='TRAIN_STEPS = 4' ...

It does what `tools/train.py --strategy=multi_worker` does (`train_lib.run`), then writes what
this worker ended with to `--weights_out`: the model's variables (`var/<i>`, `name/<i>`), the
optimizer step, and the number of replicas and the global batch size the trainer used. The
weights of the non-chief worker exist nowhere else once training ends (its temporary dir under
the model dir is removed), hence this dump.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("model_dir", None, "The shared model dir.")
flags.DEFINE_multi_string("gin_file", [], "gin config files.")
flags.DEFINE_multi_string("gin_bindings", [], "gin bindings.")
flags.DEFINE_string("weights_out", None, "npz file for this worker's final variables.")
flags.mark_flags_as_required(["model_dir", "weights_out"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import logging as py_logging

    import numpy as np
    import tensorflow as tf
    from absl import logging

    from vim_tf.training import train_lib

    # Grappler's rewrites take much of the tracing time of a tiny step and change nothing that
    # is computed (as in vim_tf.testing.distribute_check).
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    logging.set_verbosity(logging.INFO)
    logged = []

    class Record(py_logging.Handler):  # keeps the log lines (e.g. "... (global batch N, ...")
        def emit(self, record):
            logged.append(record.getMessage())

    py_logging.getLogger("absl").addHandler(Record())
    model = train_lib.run(FLAGS.model_dir, FLAGS.gin_file, FLAGS.gin_bindings, "multi_worker")
    out = {"step": np.array(int(model.step.numpy()))}
    for i, w in enumerate(model.weights):
        out[f"var/{i}"] = np.asarray(w.numpy())
        out[f"name/{i}"] = np.array(w.path)
    out["log"] = np.array(logged)
    np.savez(FLAGS.weights_out, **out)
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
