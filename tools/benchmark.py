"""`python tools/benchmark.py [flags]`: the `vim-benchmark` command (vim_tf/bin/benchmark.py)."""

from vim_tf.bin.benchmark import run

if __name__ == "__main__":
    run()
