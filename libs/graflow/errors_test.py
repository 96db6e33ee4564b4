"""Every SDK exception lives in graflow.errors; the modules that defined them before 0.10 still
export them (public API: code written against the older wheels keeps importing them there)."""

from types import ModuleType

import pytest

import graflow
from graflow import client, devstack, errors, feedback, operators
from graflow.cli import base
from graflow.cli import devstack as cli_devstack


@pytest.mark.parametrize(
    ("module", "name"),
    [
        (client, "ServiceUnavailableError"),
        (client, "ServiceCallError"),
        (operators, "DeadLetterNotFoundError"),
        (feedback, "ChildRunError"),
        (base, "UsageError"),
        (cli_devstack, "LocalStackError"),
        (devstack, "LocalStackError"),
    ],
)
def test_exceptions_keep_their_old_import_paths(module: ModuleType, name: str):
    assert getattr(module, name) is getattr(errors, name)


def test_every_exception_of_the_sdk_is_a_graflow_error_defined_in_graflow_errors():
    defined = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, BaseException)]
    assert defined and all(issubclass(e, errors.GraflowError) for e in defined)
    exported = [getattr(graflow, name) for name in graflow.__all__]
    assert [
        e for e in exported
        if isinstance(e, type) and issubclass(e, BaseException) and e.__module__ != "graflow.errors"
    ] == []
