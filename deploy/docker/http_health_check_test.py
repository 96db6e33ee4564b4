"""The console's container health check against the real console process (``python -m
graflow_console``): over HTTPS with the console's own TLS variables, and refused when nothing
serves."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from graflow.cli.devstack import child_pythonpath
from graflow_runtime.local_redis import free_port
from graflow_runtime.testing.certs import make_ca

SCRIPT = Path(__file__).with_name("http_health_check.py")


def check(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def https_console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    ca = make_ca(tmp_path_factory.mktemp("tls"))
    files = ca.issue("console")
    port = free_port()
    env = {"GRAFLOW_CONSOLE_TLS_CERT_FILE": str(files.cert), "GRAFLOW_CONSOLE_TLS_KEY_FILE": str(files.key),
           "GRAFLOW_CONSOLE_TLS_CA_FILE": str(ca.cert), "GRAFLOW_CONSOLE_PORT": str(port)}
    process = subprocess.Popen([sys.executable, "-m", "graflow_console"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": child_pythonpath(), **env})
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while check("--tls-env", "GRAFLOW_CONSOLE_", address, env=env).returncode != 0:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the console did not answer /healthz within 60 s"
            time.sleep(0.2)
        yield address, env
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert process.returncode == 0  # a clean stop on SIGTERM


def test_healthy_over_https_with_the_consoles_tls_variables(https_console: tuple[str, dict[str, str]]):
    address, env = https_console
    assert check("--tls-env", "GRAFLOW_CONSOLE_", address, env=env).returncode == 0


def test_plain_http_to_an_https_console_is_unhealthy(https_console: tuple[str, dict[str, str]]):
    address, env = https_console
    result = check(address, env=env)
    assert result.returncode == 1 and "unhealthy" in result.stderr


def test_nothing_listening_is_unhealthy():
    result = check(f"127.0.0.1:{free_port()}", env={})
    assert result.returncode == 1 and "unhealthy" in result.stderr
