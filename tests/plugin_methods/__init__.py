"""Test-only methods, each one file, registered by the tests (ptune_dist.methods.register): what a method
defined outside ptune_dist needs (tests/test_method_plugin.py)."""
