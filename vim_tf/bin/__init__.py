"""The command-line binaries, one module per command (absl flags, then one library call).

Each is a console script (`vim-train`, `vim-evaluate`, `vim-sample`, `vim-encode`, `vim-export`,
`vim-linear-probe`, `vim-demo`, `vim-benchmark`, `vim-param-counts`), runs as
`python -m vim_tf.bin.<name>`, and from a checkout as `python tools/<name>.py`. Each module
defines its flags when imported: import one per process.
"""
