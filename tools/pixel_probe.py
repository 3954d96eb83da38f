"""`python tools/pixel_probe.py [flags]`: the `vim-pixel-probe` command (vim_tf/bin/pixel_probe.py)."""

from vim_tf.bin.pixel_probe import run

if __name__ == "__main__":
    run()
