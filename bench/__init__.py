"""Benchmarks: each writes its latest results, with the command that produced them, to docs/benchmarks.md."""
