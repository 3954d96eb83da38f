"""`python tools/evaluate.py [flags]`: the `vim-evaluate` command (vim_tf/bin/evaluate.py)."""

from vim_tf.bin.evaluate import run

if __name__ == "__main__":
    run()
