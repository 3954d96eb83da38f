"""`python tools/sample.py [flags]`: the `vim-sample` command (vim_tf/bin/sample.py)."""

from vim_tf.bin.sample import run

if __name__ == "__main__":
    run()
