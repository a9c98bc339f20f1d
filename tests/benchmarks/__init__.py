"""Tests of the benchmark scripts that must not rot between the runs that use them."""
