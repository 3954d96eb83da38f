"""Runs the train binary (`vim_tf.bin.train`, what `tools/train.py` runs) with a fault injected,
for the reliability tests.

python tests/faults.py --kill_before_state_update=N -- <train flags>
  SIGKILLs this process while checkpoint N is being saved: its data and index files are on disk,
  but the `checkpoint` state file does not name it yet (the last moment of a save).
python tests/faults.py --kill_before_merge=N -- <flags>
  SIGKILLs it earlier in the same save: shard files written to the `ckpt-N_temp` dir, not yet
  merged into ckpt-N.
"""

import os
import runpy
import signal
import sys


def _kill_self():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install(kind, number):
    from tensorflow.python.checkpoint import checkpoint_management, functional_saver

    suffix = f"ckpt-{number}"
    if kind == "kill_before_state_update":
        original = checkpoint_management.update_checkpoint_state_internal

        def update(save_dir, model_checkpoint_path, *args, **kwargs):
            if os.path.basename(str(model_checkpoint_path)) == suffix:
                _kill_self()
            return original(save_dir, model_checkpoint_path, *args, **kwargs)

        checkpoint_management.update_checkpoint_state_internal = update
    elif kind == "kill_before_merge":
        original = functional_saver.gen_io_ops.merge_v2_checkpoints

        def merge(checkpoint_prefixes, destination_prefix, *args, **kwargs):
            prefix = destination_prefix
            if hasattr(prefix, "numpy"):
                prefix = prefix.numpy().decode()
            if str(prefix).endswith(suffix):
                _kill_self()
            return original(checkpoint_prefixes, destination_prefix, *args, **kwargs)

        functional_saver.gen_io_ops.merge_v2_checkpoints = merge
    else:
        raise ValueError(f"unknown fault {kind!r}")


def main(argv):
    if "--" not in argv:
        raise SystemExit(__doc__)
    split = argv.index("--")
    faults, flags = argv[1:split], argv[split + 1 :]
    for fault in faults:
        name, _, number = fault.lstrip("-").partition("=")
        _install(name, int(number))
    sys.argv = ["vim_tf.bin.train", *flags]
    runpy.run_module("vim_tf.bin.train", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv)
