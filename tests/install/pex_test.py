"""No PEX carries a test module: the contents of every ``pex_binary`` (one per service, and the
``graflow`` command's), as Pants builds them into this sandbox (``dist/`` layout), listed.

Only our own code is checked: the top-level packages of a PEX. Its third-party wheels (``.deps/``)
and PEX's bootstrap code (``.bootstrap/``) are not ours to arrange. So, for example, the worker's
probe tasks (``graflow_worker/testing/tasks.py``) cannot be loaded in production through
``GRAFLOW_WORKER_TASK_MODULES``: they are not in ``worker.pex``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests.install.contents import is_test_module

# Where `./pants package` writes each pex_binary (services/<svc>/BUILD, services/cli/BUILD).
PEXES = {
    "scheduler": "services.scheduler/scheduler.pex",
    "coordinator": "services.coordinator/coordinator.pex",
    "result-store": "services.result-store/result-store.pex",
    "worker": "services.worker/worker.pex",
    "console": "services.console/console.pex",
    "graflow": "services.cli/graflow.pex",
}
NOT_OURS = (".deps/", ".bootstrap/")


def our_files(pex: Path) -> list[str]:
    with zipfile.ZipFile(pex) as archive:
        names = archive.namelist()
    return [name for name in names if not name.startswith(NOT_OURS) and not name.endswith("/")]


def test_every_service_pex_is_built_here():
    assert sorted(str(p) for p in Path().glob("*/*.pex")) == sorted(PEXES.values())


def test_no_pex_contains_a_test_module():
    contents = {name: our_files(Path(path)) for name, path in PEXES.items()}
    # The listing reads the packages' real contents (not an empty or unexpected layout).
    assert "graflow_worker/intake.py" in contents["worker"], contents["worker"][:20]
    assert "graflow_scheduler/__main__.py" in contents["graflow"], contents["graflow"][:20]
    shipped = {name: [f for f in files if is_test_module(f)] for name, files in contents.items()}
    assert not {name: files for name, files in shipped.items() if files}


def test_every_pex_carries_uvloop():
    """The services' event loop: inference does not see it (graflow_runtime.lifecycle), the
    services' targets depend on it."""
    for name, path in PEXES.items():
        with zipfile.ZipFile(path) as archive:
            wheels = {entry.split("/")[1] for entry in archive.namelist() if entry.startswith(".deps/")}
        assert any(wheel.startswith("uvloop-") for wheel in wheels), (name, sorted(wheels))


@pytest.mark.parametrize(
    "path",
    [
        "graflow_worker/worker_test.py",
        "graflow/cli/cli_test_support.py",
        "graflow_scheduler/conftest.py",
        "graflow_worker/testing/tasks.py",
        "graflow/cli/testing/__init__.py",
    ],
)
def test_test_files_and_anything_under_a_testing_folder_are_test_modules(path: str):
    assert is_test_module(path)


@pytest.mark.parametrize(
    "path", ["graflow_worker/worker.py", "graflow/testing_helpers.py", "graflow_testing_like/plugin.py"]
)
def test_other_modules_are_not_test_modules(path: str):
    assert not is_test_module(path)
