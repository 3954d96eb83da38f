"""`python tools/param_counts.py [flags]`: the `vim-param-counts` command (vim_tf/bin/param_counts.py)."""

from vim_tf.bin.param_counts import run

if __name__ == "__main__":
    run()
