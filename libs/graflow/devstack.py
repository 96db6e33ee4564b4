"""The local stack's stable import path: :mod:`graflow.cli.devstack` holds it (``graflow dev``'s
engine); end-to-end tests, benchmarks and users' own tests import it from here."""

from graflow.cli.devstack import (
    MODULES,
    PREFIXES,
    SERVERS,
    LocalStack,
    LocalStackError,
    ServiceProcess,
    StackTls,
    child_pythonpath,
    read_tail,
)

__all__ = [
    "MODULES",
    "PREFIXES",
    "SERVERS",
    "LocalStack",
    "LocalStackError",
    "ServiceProcess",
    "StackTls",
    "child_pythonpath",
    "read_tail",
]
