"""`python tools/demo.py [flags]`: the `vim-demo` command (vim_tf/bin/demo.py)."""

from vim_tf.bin.demo import run

if __name__ == "__main__":
    run()
