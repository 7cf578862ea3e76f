"""Benchmarks: `python -m bench.<name>` from the repository's root (see README)."""
