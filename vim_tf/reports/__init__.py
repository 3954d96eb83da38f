"""Reports about the system rather than parts of it: throughput benchmarks, parameter counts.

They sit above training (they build models the way the trainer does and time their steps), so
nothing in the library imports them; the `vim-benchmark` and `vim-param-counts` binaries do.
"""
