"""`python tools/kmeans_baseline.py [flags]`: the `vim-kmeans-baseline` command (vim_tf/bin/kmeans_baseline.py)."""

from vim_tf.bin.kmeans_baseline import run

if __name__ == "__main__":
    run()
