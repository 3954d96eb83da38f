"""`python tools/train.py [flags]`: the `vim-train` command (vim_tf/bin/train.py)."""

from vim_tf.bin.train import run

if __name__ == "__main__":
    run()
