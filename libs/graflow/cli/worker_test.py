"""`graflow worker` and `graflow dev --tasks`: a user's own task module, run from its directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from graflow import Client
from graflow.cli.dev import worker_env
from graflow.cli.testing.capture import read_dev_exports
from graflow.devstack import LocalStack, child_pythonpath
from graflow_examples import TASK_MODULES

USER_TASKS = textwrap.dedent(
    """
    from graflow import task, workflow

    @task
    def shout(text: str = "hi") -> str:
        return text.upper() + "!"

    def greeting(queue: str = "default"):
        with workflow("greeting", queue=queue) as wf:
            wf.add(shout(task_id="shout", text="hello"))
        return wf
    """
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's directory holding only their task module."""
    (tmp_path / "mytasks.py").write_text(USER_TASKS)
    return tmp_path


def _graflow(*argv: str, cwd: Path, **popen: Any) -> subprocess.Popen[str]:
    """The `graflow` command as a process in ``cwd``, importing what this test can."""
    child_env = {**os.environ, "PYTHONPATH": child_pythonpath()}
    return subprocess.Popen(
        [sys.executable, "-m", "graflow.cli", *argv], cwd=cwd, env=child_env, text=True, **popen
    )


def _load_user_module(project: Path):
    sys.path.insert(0, str(project))
    try:
        import mytasks  # type: ignore[import-not-found]  # pants: no-infer-dep
    finally:
        sys.path.remove(str(project))
    return mytasks


# ---- offline ----
def test_worker_flags_set_the_worker_settings_and_override_the_environment(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    environ = {"GRAFLOW_WORKER_QUEUES": "old", "GRAFLOW_WORKER_CONCURRENCY": "8", "HOME": "/home/u"}
    env = worker_env(
        {"app": ["mytasks", "more"], "queues": "mine,other", "redis": "redis://h:1/0", "concurrency": None},
        environ,
    )
    assert env["GRAFLOW_WORKER_TASK_MODULES"] == "mytasks,more"
    assert env["GRAFLOW_WORKER_QUEUES"] == "mine,other"
    assert env["GRAFLOW_WORKER_REDIS_URL"] == "redis://h:1/0"
    assert env["GRAFLOW_WORKER_CONCURRENCY"] == "8"  # no flag: the environment's value stays
    assert env["HOME"] == "/home/u"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path)  # `-A mytasks` from its directory


def test_the_global_token_and_tls_options_become_the_workers_settings():
    given = {"token": "t", "tls_ca_file": "/c/ca.crt", "tls_cert_file": "/c/w.crt",
             "tls_key_file": "/c/w.key"}
    env = worker_env(given, {"GRAFLOW_WORKER_TLS_CA_FILE": "/old/ca.crt"})
    assert env["GRAFLOW_WORKER_AUTH_TOKEN"] == "t"
    assert env["GRAFLOW_WORKER_TLS_CA_FILE"] == "/c/ca.crt"  # the option wins over the environment
    assert env["GRAFLOW_WORKER_TLS_CERT_FILE"] == "/c/w.crt"
    assert env["GRAFLOW_WORKER_TLS_KEY_FILE"] == "/c/w.key"


def test_worker_names_a_module_it_cannot_find_and_exits_2(project):
    done = _graflow("worker", "-A", "no_such_tasks_xyz", cwd=project, stderr=subprocess.PIPE)
    _, err = done.communicate(timeout=60)
    assert done.returncode == 2
    assert "no module 'no_such_tasks_xyz'" in err


def test_worker_not_installed_says_how_to_install_it(project):
    """A Python path without the worker package (as with `pip install graflow` alone)."""
    path = [p for p in child_pythonpath().split(os.pathsep) if not (Path(p) / "graflow_worker").is_dir()]
    done = subprocess.run(
        [sys.executable, "-m", "graflow.cli", "worker", "-A", "mytasks"],
        cwd=project,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "the worker is not installed: pip install 'graflow[worker]'" in done.stderr


# ---- against a running stack ----
@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(workers=1, task_modules=TASK_MODULES) as running:
        yield running


def test_worker_runs_the_users_tasks_on_its_queue_until_sigterm(stack, project):
    worker = _graflow(
        "worker", "-A", "mytasks", "-Q", "mine", "-c", "2", "--worker-id", "my-worker",
        "--redis", stack.redis_url, "--coordinator", stack.coordinator_address,
        "--result-store", stack.result_store_address, "--scheduler", stack.scheduler_address,
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with stack.client(timeout=20) as client:
            run = client.submit(_load_user_module(project).greeting(queue="mine"))
            assert run.result(timeout=60) == "HELLO!"
        worker.send_signal(signal.SIGTERM)  # exec'd: the signal reaches the worker itself
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_dev_tasks_loads_the_users_module_in_the_stacks_workers_on_the_default_queue(project):
    dev = _graflow(
        "dev", "--workers", "1", "--keep", "--any-ports", "--tasks", "mytasks",
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert dev.stdout is not None
        exports = read_dev_exports(dev.stdout)
        scheduler = next(v for k, v in exports.items() if k.endswith("SCHEDULER_ADDRESS"))
        result_store = next(v for k, v in exports.items() if k.endswith("RESULT_STORE_ADDRESS"))
        with Client(scheduler, result_store, timeout=20) as client:
            assert client.submit(_load_user_module(project).greeting()).result(timeout=60) == "HELLO!"
        dev.send_signal(signal.SIGINT)
        assert dev.wait(timeout=60) == 0
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
