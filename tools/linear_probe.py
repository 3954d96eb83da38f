"""`python tools/linear_probe.py [flags]`: the `vim-linear-probe` command (vim_tf/bin/linear_probe.py)."""

from vim_tf.bin.linear_probe import run

if __name__ == "__main__":
    run()
