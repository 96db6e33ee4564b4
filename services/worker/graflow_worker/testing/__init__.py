"""Test support of the worker's own tests: gRPC doubles of its downstreams and probe tasks. A test
utility (``python_test_utils``): no wheel or PEX carries it, so a deployed worker cannot load these
tasks through ``GRAFLOW_WORKER_TASK_MODULES``."""
