"""`python tools/export.py [flags]`: the `vim-export` command (vim_tf/bin/export.py)."""

from vim_tf.bin.export import run

if __name__ == "__main__":
    run()
