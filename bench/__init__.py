"""Benchmarks: our Triton server (through the client) against PyTorch `transformers` on the same checkpoint.

`python -m bench [--quick]` (or `make bench` / `make bench-quick`); see bench/README.md.
"""
