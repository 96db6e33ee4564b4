"""The README's "Install with pip" and "Deploying" blocks, run as written by a user: a fresh
python3.11 virtualenv, the six wheels that ``./pants package`` builds (their third-party
requirements from the package index), and a directory that holds only the README's ``mytasks.py``
and ``submit.py``. Nothing comes from the repository: no PYTHONPATH, no Pants; the processes run the
venv's commands and a real redis-server.

What differs from typing the blocks, and why: Pants has already built the wheels (into this
sandbox, which stands for ``dist/``) and the venv's path is a temporary one; ``graflow dev`` gets
``--any-ports`` so that it never takes the default ports another test may hold, and the services
of the "Deploying" block get free ports and a private Redis through their variables.

pip ignores the machine's and the user's pip configuration here (as ``./pants`` does, see
docs/build.md) and trusts the system CA bundle, so that what is installed is what the wheels ask for.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from graflow_runtime.local_redis import LocalRedis, free_port
from graflow_runtime.version import __version__
from tests.install.contents import is_test_module
from tests.readme.blocks import readme_block

WHEELS = ("graflow", "graflow_scheduler", "graflow_coordinator", "graflow_result_store", "graflow_worker",
          "graflow_console")
START_TIMEOUT_S = 90


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

    def stop(self, sig: signal.Signals = signal.SIGINT, grace_s: float = 30) -> None:
        """``sig`` (Ctrl-C: ``graflow dev`` stops its stack; SIGTERM: a service drains and exits),
        then SIGKILL the group."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
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


def pip_env() -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    cafile = ssl.get_default_verify_paths().cafile
    if cafile:
        env["PIP_CERT"] = cafile
    return env


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The README's install block: ``dist/`` is where Pants put the wheels, ``~/graflow`` a temp dir."""
    assert shutil.which("python3.11"), "this test needs python3.11 on PATH"
    wheels = sorted(Path.cwd().glob("*.whl"))  # where Pants puts runtime_package_dependencies
    assert sorted(w.name.split("-")[0] for w in wheels) == sorted(WHEELS), wheels
    assert all(f"-{__version__}-" in w.name for w in wheels), wheels
    venv = tmp_path_factory.mktemp("home") / "graflow"
    block = readme_block("install")
    script = [c for c in block.commands() if not c.startswith("./pants ")]  # CI runs `./pants package ::`
    script = [c.replace("~/graflow", str(venv)).replace("dist/", f"{Path.cwd()}/") for c in script]
    done = subprocess.run(["bash", "-euc", "\n".join(script)], env=pip_env(), capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, (script, done.stdout, done.stderr)
    assert done.stdout.strip().splitlines()[-1] == f"graflow {__version__}"  # `graflow --version`
    yield venv
    leftovers = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        leftovers = processes_using(venv)
        if not leftovers:
            break
        time.sleep(0.2)
    assert not leftovers, "processes left behind:\n" + "\n".join(leftovers)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory of the user's own: the README's mytasks.py and submit.py, nothing else."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "mytasks.py").write_text(readme_block("own-tasks-module").text)
    (project / "submit.py").write_text(readme_block("own-tasks-submit").text)
    return project


def user_env(venv: Path, tmp_path: Path) -> dict[str, str]:
    """Only the venv's commands and redis-server from the PATH; nothing of the repository."""
    return {"PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path)}


def run_py(venv: Path, project: Path, env: dict[str, str], *argv: str) -> str:
    done = subprocess.run([str(venv / "bin" / "python"), *argv], cwd=project, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, (argv, done.stdout, done.stderr)
    return done.stdout


def graflow_out(venv: Path, project: Path, env: dict[str, str], *argv: str) -> str:
    done = subprocess.run([str(venv / "bin" / "graflow"), *argv, "-o", "json"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, (argv, done.stdout, done.stderr)
    return done.stdout


def workers_of(venv: Path, project: Path, env: dict[str, str]) -> dict[str, str]:
    """Node id → the worker that ran it, for the newest run (from its events)."""
    newest = json.loads(graflow_out(venv, project, env, "runs"))[0]
    lines = graflow_out(venv, project, env, "watch", newest["run_id"]).splitlines()
    events = [json.loads(line) for line in lines]
    return {event["node_id"]: event["worker_id"] for event in events if event["worker_id"]}


def assert_nothing_from_the_repository(venv: Path, project: Path, env: dict[str, str]) -> None:
    seen = json.loads(run_py(venv, project, env, "-c",
                             "import graflow, json, sys; print(json.dumps([graflow.__file__, sys.path]))"))
    assert seen[0].startswith(str(venv)), seen
    repository = str(Path(__file__).resolve().parents[2])
    assert not [p for p in seen[1] if p.startswith(repository) or p == os.getcwd()], seen


def test_readme_own_tasks_run_with_graflow_dev_and_graflow_worker(venv: Path, project: Path, tmp_path: Path):
    env = user_env(venv, tmp_path)
    dev_line, worker_line, submit_line = readme_block("own-tasks-run").commands()
    assert (submit_line, shlex.split(dev_line)[0], shlex.split(worker_line)[0]) == (
        "python submit.py", "graflow", "graflow")
    dev = Process([str(venv / "bin" / "graflow"), *shlex.split(dev_line)[1:], "--any-ports"], project, env)
    worker = None
    try:
        dev.wait_for("press Ctrl-C to stop")
        exports = dict(line.split("export ", 1)[1].split("=", 1) for line in dev.lines if "export " in line)
        env = {**env, **exports}  # "after those exports"
        worker = Process([str(venv / "bin" / "graflow"), *shlex.split(worker_line)[1:]], project, env)
        worker.wait_for('"worker consuming"')
        started = json.loads(next(line for line in worker.lines if '"worker consuming"' in line))
        assert started["version"] == __version__

        printed = run_py(venv, project, env, "submit.py")
        assert printed.splitlines()[-1] == "2 OF 3", printed
        ran_on = workers_of(venv, project, env)
        assert_nothing_from_the_repository(venv, project, env)
    finally:
        if worker is not None:
            worker.stop()
        dev.stop()

    assert ran_on["report"].startswith("dev-worker-"), ran_on  # the stack's workers, queue default
    assert not ran_on["shout"].startswith("dev-worker-"), ran_on  # `graflow worker -Q mine`
    assert dev.popen.returncode == 0, dev.output()
    assert worker.popen.returncode == 0, worker.output()


def test_readme_services_block_runs_each_service_from_its_wheel(venv: Path, project: Path, tmp_path: Path):
    ports = {svc: free_port() for svc in ("SCHEDULER", "COORDINATOR", "RESULT_STORE")}
    processes: list[Process] = []
    with LocalRedis() as redis:
        env = user_env(venv, tmp_path)
        for role in ("SCHEDULER", "COORDINATOR", "RESULT_STORE", "WORKER"):
            env[f"GRAFLOW_{role}_REDIS_URL"] = redis.url
            env[f"GRAFLOW_{role}_LOG_FORMAT"] = "json"
        for svc, port in ports.items():
            env[f"GRAFLOW_{svc}_LISTEN_ADDRESS"] = f"127.0.0.1:{port}"
            env[f"GRAFLOW_CLIENT_{svc}_ADDRESS"] = f"127.0.0.1:{port}"
            for role in ("SCHEDULER", "WORKER"):
                env[f"GRAFLOW_{role}_{svc}_ADDRESS"] = f"127.0.0.1:{port}"
        try:
            for command in readme_block("services").commands():
                words = shlex.split(command.removesuffix("&").strip())
                processes.append(Process([str(venv / "bin" / words[0]), *words[1:]], project, env))
                ready = '"worker consuming"' if words[0] == "graflow" else " listening"
                processes[-1].wait_for(ready)
            printed = run_py(venv, project, env, "submit.py")
            assert printed.splitlines()[-1] == "2 OF 3", printed
        finally:
            for process in reversed(processes):
                process.stop(signal.SIGTERM)
    assert [p.popen.returncode for p in processes] == [0, 0, 0, 0], [p.output() for p in processes]
    # Each ran on the uvloop its wheel requires.
    loops = [[json.loads(line)["loop"] for line in p.lines if '"event loop"' in line] for p in processes]
    assert all(len(loop) == 1 and loop[0].startswith("uvloop ") for loop in loops), loops


def test_each_file_is_in_one_wheel_and_requirements_are_the_declared_ranges():
    wheels = sorted(Path.cwd().glob("*.whl"))
    owners: dict[str, list[str]] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if ".dist-info/" not in name:
                    owners.setdefault(name, []).append(wheel.name)
    assert not {name: where for name, where in owners.items() if len(where) > 1}
    assert {"graflow_runtime/version.py", "graflow_api/v1/messages_pb2.py"} <= set(owners)
    assert not [name for name in owners if is_test_module(name)]

    graflow = next(w for w in wheels if w.name.startswith("graflow-"))
    requires = requires_dist(graflow)
    assert requires and all("==" not in r for r in requires), requires  # ranges, not lockfile pins
    names = {requirement_name(r) for r in requires}
    assert not names & {"pytest", "pytest-asyncio", "testcontainers", "docker", "types-protobuf"}, names
    assert {"grpcio", "redis", "click", "rich"} <= names, names
    grpcio = next(r for r in requires if r.startswith("grpcio") and r[6:7] in " <>=(")
    assert "<2" in grpcio and ">=1.66" in grpcio, grpcio  # the range of 3rdparty/python/requirements.txt


def requires_dist(wheel: Path) -> list[str]:
    """The ``Requires-Dist`` lines of ``wheel``'s metadata, those of extras left out."""
    name = wheel.name.split("-")[0]
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(f"{name}-{__version__}.dist-info/METADATA").decode()
    return [line.removeprefix("Requires-Dist: ") for line in metadata.splitlines()
            if line.startswith("Requires-Dist: ") and "extra ==" not in line]


def requirement_name(requirement: str) -> str:
    return requirement.split(" ")[0].split(";")[0].split("[")[0].split("<")[0].split(">")[0].lower()


def test_the_services_wheels_require_uvloop_and_the_sdk_wheel_does_not():
    wheels = {wheel.name.split("-")[0]: wheel for wheel in Path.cwd().glob("*.whl")}
    assert set(wheels) == set(WHEELS), wheels
    assert "uvloop" not in {requirement_name(r) for r in requires_dist(wheels["graflow"])}
    for service in WHEELS[1:]:
        [uvloop] = [r for r in requires_dist(wheels[service]) if requirement_name(r) == "uvloop"]
        assert "win32" in uvloop, uvloop  # the range and marker of 3rdparty/python/requirements.txt
