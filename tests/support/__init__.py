"""Helpers for the tests and benchmarks only (never shipped in the wheel)."""
