"""The task allowlist: what is registered, and the errors that stop a worker at start-up."""

from __future__ import annotations

import textwrap

import pytest

from graflow_worker.registry import RegistryError, load_registry
from graflow_worker.testing.services import TASKS_MODULE


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """Write throw-away modules: modules(name=source)."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(**sources: str) -> None:
        for name, source in sources.items():
            (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))

    return write


def test_every_task_function_of_a_module_is_registered_by_name():
    registry = load_registry([TASKS_MODULE])
    assert {"add", "async_double", "with_channel", "collect"} <= set(registry)
    assert registry["add"].name == "add"
    assert registry.modules["add"] == TASKS_MODULE
    assert registry.task_types == sorted(registry)


def test_custom_task_names_and_reexports_of_the_same_task_are_fine(modules):
    modules(
        wr_one="""
            from graflow import task

            @task("renamed")
            def original():
                return 1

            helper = 42
        """,
        wr_two="from wr_one import original as again\n",
    )
    registry = load_registry(["wr_one", "wr_two"])
    assert list(registry) == ["renamed"]


def test_two_different_functions_with_one_name_are_rejected_naming_both_modules(modules):
    modules(
        wr_dup_a="from graflow import task\n\n@task\ndef clash():\n    return 'a'\n",
        wr_dup_b="from graflow import task\n\n@task('clash')\ndef other():\n    return 'b'\n",
    )
    with pytest.raises(RegistryError, match="'clash' is defined twice") as info:
        load_registry(["wr_dup_a", "wr_dup_b"])
    assert "wr_dup_a" in str(info.value) and "wr_dup_b" in str(info.value)


def test_a_module_that_fails_to_import_is_named(modules):
    modules(wr_broken="raise RuntimeError('config missing')\n")
    with pytest.raises(RegistryError, match="'wr_broken' failed to import: RuntimeError: config missing"):
        load_registry(["wr_broken"])
    with pytest.raises(RegistryError, match="'wr_does_not_exist' failed to import: ModuleNotFoundError"):
        load_registry(["wr_does_not_exist"])


def test_modules_without_any_task_are_rejected(modules):
    modules(wr_empty="VALUE = 1\n")
    with pytest.raises(RegistryError, match="no @task functions found"):
        load_registry(["wr_empty"])
