"""``python -m graflow_result_store`` as a real process: health, log line, graceful SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from graflow_runtime.local_redis import free_port
from graflow_runtime.version import __version__


def wait_serving(address: str, process: subprocess.Popen, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert process.poll() is None, "result-store exited during start-up"
            try:
                if (
                    health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise AssertionError(f"result-store not SERVING at {address} within {deadline_s}s")


def run_service(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "graflow_result_store"],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def test_process_serves_logs_its_port_and_stops_cleanly_on_sigterm(redis_url, tmp_path):
    port = free_port()
    log_path = tmp_path / "result-store.log"
    process = run_service(
        {
            "GRAFLOW_RESULT_STORE_REDIS_URL": redis_url,
            "GRAFLOW_RESULT_STORE_LISTEN_ADDRESS": f"127.0.0.1:{port}",
            "GRAFLOW_RESULT_STORE_LOG_FORMAT": "json",
        },
        log_path,
    )
    try:
        wait_serving(f"127.0.0.1:{port}", process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    listening = next(line for line in lines if line["event"] == "result-store listening")
    assert (listening["port"], listening["version"]) == (port, __version__)
    assert events.index("result-store listening") < events.index("result-store stopped")


def test_bad_settings_stop_the_process_naming_the_variable(tmp_path):
    log_path = tmp_path / "result-store.log"
    process = run_service(
        {"GRAFLOW_RESULT_STORE_RETENTION_S": "soon", "GRAFLOW_RESULT_STORE_LOG_FORMAT": "json"}, log_path
    )
    assert process.wait(timeout=30) == 2
    assert "GRAFLOW_RESULT_STORE_RETENTION_S" in log_path.read_text()


def test_unreachable_redis_stops_start_up_with_the_url(tmp_path):
    log_path = tmp_path / "result-store.log"
    url = f"redis://127.0.0.1:{free_port()}/0"
    process = run_service(
        {
            "GRAFLOW_RESULT_STORE_REDIS_URL": url,
            "GRAFLOW_RESULT_STORE_LISTEN_ADDRESS": "127.0.0.1:0",
            "GRAFLOW_RESULT_STORE_LOG_FORMAT": "json",
        },
        log_path,
    )
    assert process.wait(timeout=60) == 1
    assert f"cannot reach Redis at {url}" in log_path.read_text()
