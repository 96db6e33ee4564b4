"""The wheels, installed with pip as a user would: a fresh python3.11 virtualenv, the five wheels that
``./pants package`` builds (their third-party requirements from the package index), and a directory
that holds only the user's task module and submit script. Nothing comes from the repository: no
PYTHONPATH, no Pants; the processes run the venv's ``graflow`` command and a real redis-server.

``graflow dev --tasks mytasks --keep`` runs the local stack whose workers load the user's tasks
(queue ``default``); ``graflow worker -A mytasks -Q mine`` joins it as the only worker of queue
``mine``. One workflow runs on each queue, to its result.

pip ignores the machine's and the user's pip configuration here (as ``./pants`` does, see
docs/build.md) and trusts the system CA bundle, so that what is installed is what the wheels ask for.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from graflow_runtime.version import __version__

WHEELS = ("graflow", "graflow_scheduler", "graflow_coordinator", "graflow_result_store", "graflow_worker")
START_TIMEOUT_S = 90

MYTASKS = '''
import os

from graflow import task


@task
def numbers() -> list[int]:
    return [3, 4, 5]


@task
def square_sum(numbers: list[int]) -> dict:
    return {"sum": sum(n * n for n in numbers), "worker": os.environ["GRAFLOW_WORKER_WORKER_ID"]}
'''

SUBMIT = '''
import json
import sys

import graflow
from graflow import Client, workflow

from mytasks import numbers, square_sum

with workflow("on-default") as on_default:
    numbers >> square_sum
with workflow("on-mine", queue="mine") as on_mine:
    numbers >> square_sum

with Client() as client:
    runs = [client.submit(wf) for wf in (on_default, on_mine)]
    results = [run.result(timeout=60) for run in runs]
print(json.dumps({"results": results, "graflow": graflow.__file__, "sys_path": sys.path}))
'''


class Process:
    """A child process whose output lines are collected by a thread, so a test can wait for one."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.argv = argv
        self.popen = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._new_line:
                self.lines.append(line.rstrip("\n"))
                self._new_line.notify_all()

    def wait_for(self, text: str, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        with self._new_line:
            while not any(text in line for line in self.lines):
                if self.popen.poll() is not None and not self._reader.is_alive():
                    pytest.fail(f"{self.argv[:2]} exited with {self.popen.returncode} before "
                                f"printing {text!r}:\n{self.output()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"{self.argv[:2]} printed no {text!r} within {timeout_s}s:\n{self.output()}")
                self._new_line.wait(0.5)

    def output(self) -> str:
        return "\n".join(self.lines[-60:])

    def stop(self, grace_s: float = 30) -> None:
        """SIGINT (Ctrl-C: ``graflow dev`` stops its stack; the worker drains), then SIGKILL the group."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        self._reader.join(10)


def processes_using(directory: Path) -> list[str]:
    """Command lines of running processes that mention ``directory`` (the venv)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile, or not a process directory
            continue
        if str(directory) in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.fixture
def venv(tmp_path: Path) -> Iterator[Path]:
    python = shutil.which("python3.11")
    assert python, "this test needs python3.11 on PATH"
    wheels = sorted(Path.cwd().glob("*.whl"))  # where Pants puts runtime_package_dependencies
    assert sorted(w.name.split("-")[0] for w in wheels) == sorted(WHEELS), wheels
    assert all(f"-{__version__}-" in w.name for w in wheels), wheels
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", venv], check=True, timeout=60)
    pip_env = {"PATH": os.environ["PATH"], "PIP_CONFIG_FILE": os.devnull}
    cafile = ssl.get_default_verify_paths().cafile
    if cafile:
        pip_env["PIP_CERT"] = cafile
    subprocess.run(
        [venv / "bin" / "pip", "install", "--disable-pip-version-check", "-q", "--no-compile", *wheels],
        check=True, timeout=300, env=pip_env,
    )
    yield venv
    leftovers = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        leftovers = processes_using(venv)
        if not leftovers:
            break
        time.sleep(0.2)
    assert not leftovers, "processes left behind:\n" + "\n".join(leftovers)


def test_installed_wheels_run_a_users_tasks_with_graflow_dev_and_graflow_worker(venv: Path, tmp_path: Path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "mytasks.py").write_text(MYTASKS)
    (project / "submit.py").write_text(SUBMIT)
    # Only the venv's commands and redis-server from the PATH; nothing of the repository.
    env = {"PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path)}
    graflow = str(venv / "bin" / "graflow")

    version = subprocess.run([graflow, "--version"], cwd=project, env=env, capture_output=True, text=True,
                             timeout=60)
    assert (version.returncode, version.stdout.strip()) == (0, f"graflow {__version__}"), version

    dev = Process([graflow, "dev", "--tasks", "mytasks", "--keep", "--any-ports", "--workers", "1"],
                  project, env)
    worker = None
    try:
        dev.wait_for("press Ctrl-C to stop")
        exports = dict(line.split("export ", 1)[1].split("=", 1) for line in dev.lines if "export " in line)
        redis_url = next(line for line in dev.lines if line.startswith("addresses: ")).split(" redis ")[1]
        worker = Process(
            [graflow, "worker", "-A", "mytasks", "-Q", "mine", "-c", "2", "--redis", redis_url,
             "--scheduler", exports["GRAFLOW_SCHEDULER_ADDRESS"],
             "--coordinator", exports["GRAFLOW_COORDINATOR_ADDRESS"],
             "--result-store", exports["GRAFLOW_RESULT_STORE_ADDRESS"], "--worker-id", "mine-1"],
            project, env,
        )
        worker.wait_for('"worker consuming"')
        started = json.loads(next(line for line in worker.lines if '"worker consuming"' in line))
        assert started["version"] == __version__

        submitted = subprocess.run([str(venv / "bin" / "python"), "submit.py"], cwd=project,
                                   env={**env, **exports}, capture_output=True, text=True, timeout=120)
        assert submitted.returncode == 0, (submitted.stderr, dev.output(), worker.output())
        report = json.loads(submitted.stdout.splitlines()[-1])
    finally:
        if worker is not None:
            worker.stop()
        dev.stop()

    assert report["results"] == [
        {"sum": 50, "worker": "dev-worker-0"},  # the stack's worker ran the user's tasks (queue default)
        {"sum": 50, "worker": "mine-1"},  # `graflow worker` ran them on its own queue
    ]
    assert report["graflow"].startswith(str(venv)), report["graflow"]
    repository = str(Path(__file__).resolve().parents[2])
    assert not [p for p in report["sys_path"] if p.startswith(repository) or p == os.getcwd()], report
    assert dev.popen.returncode == 0, dev.output()
    assert worker.popen.returncode == 0, worker.output()
