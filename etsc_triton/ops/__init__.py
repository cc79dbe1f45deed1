"""Kernel families: one folder per op, the Torch oracle (naive.py) beside its kernels."""
