"""`python tools/ablate.py [flags]`: the `vim-ablate` command (vim_tf/bin/ablate.py)."""

from vim_tf.bin.ablate import run

if __name__ == "__main__":
    run()
