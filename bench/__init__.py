"""Benchmarks: runnable scripts that print tables (see docs/performance.md)."""
