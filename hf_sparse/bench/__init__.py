"""Benchmarks: attention kernels (``hf-sparse bench-kernels``) and whole models (``hf-sparse bench-model``)
against dense SDPA in the same run, plus the process isolation and measurement helpers they use.

The library never imports this package.
"""
