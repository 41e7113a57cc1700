"""Benchmarks of the configured stack on a local test host: `make bench` (see bench/RESULTS.md)."""
