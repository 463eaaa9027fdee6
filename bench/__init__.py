"""Benchmarks of slimgraph: kernel microbenchmarks (``python -m bench.kernels``) and end-to-end runs."""
