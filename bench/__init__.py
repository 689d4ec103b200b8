"""
Benchmarks with real clients: ``python -m bench --help``.

Not part of the test suite: timings live here, never in unit tests.
"""
