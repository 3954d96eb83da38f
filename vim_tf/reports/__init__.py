"""Reports about the system rather than parts of it: throughput benchmarks, parameter counts,
the paper's Table 4 ablation at small scale and the linear probe's raw-pixel baseline.

They sit above training and evaluation (they build, train and score models the way the
binaries do), so nothing in the library imports them; the `vim-benchmark`, `vim-param-counts`,
`vim-ablate` and `vim-pixel-probe` binaries do.
"""
