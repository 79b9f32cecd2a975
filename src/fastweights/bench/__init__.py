"""Benchmarks that print tables and ratios (``fastweights bench ...``); never asserted in tests."""
