"""`python tools/encode.py [flags]`: the `vim-encode` command (vim_tf/bin/encode.py)."""

from vim_tf.bin.encode import run

if __name__ == "__main__":
    run()
