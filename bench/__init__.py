"""Benchmarks of the real pipeline on the local stack (see bench/README.md)."""
