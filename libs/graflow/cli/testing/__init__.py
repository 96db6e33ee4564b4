"""Test support of the CLI's tests. A test utility (``python_test_utils``): in no wheel or PEX."""
