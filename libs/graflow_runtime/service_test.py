"""service_main: one start-up path, its order and its exit codes, on a real process (the probe
service of graflow_runtime.testing) against a real Redis."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from graflow_runtime import keys
from graflow_runtime.local_redis import free_port
from graflow_runtime.testing import probe_service

# Both event loops a service can run on (GRAFLOW_<ROLE>_EVENT_LOOP).
LOOPS = pytest.mark.parametrize("loop", ["uvloop", "asyncio"])


def start_probe(*, python_path: tuple[str, ...] = (), **settings: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFLOW_PROBE_")}
    env["PYTHONPATH"] = os.pathsep.join([*python_path, *(p for p in sys.path if p)])
    env["GRAFLOW_PROBE_LOG_FORMAT"] = "json"
    env.update({f"GRAFLOW_PROBE_{name.upper()}": value for name, value in settings.items()})
    return subprocess.Popen(
        [sys.executable, "-m", probe_service.__name__],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout_s: float = 30) -> tuple[int, str]:
    """The exit code and stderr of ``process`` (killed if it does not end in time)."""
    try:
        _, stderr = process.communicate(timeout=timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stderr


def events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def wait_serving(process: subprocess.Popen[str], port: int, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert process.poll() is None, "the probe exited during start-up"
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.05)
    raise AssertionError(f"the probe was not SERVING on port {port} within {deadline_s} s")


@LOOPS
def test_serves_until_sigterm_then_stops_its_parts_and_exits_0(redis_url: str, loop: str) -> None:
    port = free_port()
    process = start_probe(redis_url=redis_url, listen_address=f"127.0.0.1:{port}", event_loop=loop)
    wait_serving(process, port)
    process.send_signal(signal.SIGTERM)
    code, stderr = finish(process)
    assert code == 0, stderr
    names = [e["event"] for e in events(stderr)]
    assert names.index("probe listening") < names.index("probe stopping") < names.index("probe stopped")
    [started] = [e for e in events(stderr) if e["event"] == "event loop"]
    assert started["loop"].split(" ")[0] == loop


def test_runs_on_uvloop_unless_told_otherwise_and_names_it_at_start_up(redis_url: str) -> None:
    code, stderr = finish(start_probe(redis_url=redis_url, stop_after_s="0.2"))
    assert code == 0, stderr
    [started] = [e for e in events(stderr) if e["event"] == "event loop"]
    name, version = started["loop"].split(" ")
    assert name == "uvloop" and version[0].isdigit(), started


def without_uvloop(tmp_path: Path) -> tuple[str, ...]:
    """A PYTHONPATH entry that makes ``import uvloop`` fail, as on a machine without it."""
    (tmp_path / "uvloop").mkdir()
    (tmp_path / "uvloop" / "__init__.py").write_text('raise ImportError("no uvloop on this machine")\n')
    return (str(tmp_path),)


def test_without_uvloop_auto_runs_on_asyncio(redis_url: str, tmp_path: Path) -> None:
    process = start_probe(python_path=without_uvloop(tmp_path), redis_url=redis_url, stop_after_s="0.2")
    code, stderr = finish(process)
    assert code == 0, stderr
    [started] = [e for e in events(stderr) if e["event"] == "event loop"]
    assert started["loop"] == "asyncio"


def test_uvloop_asked_for_and_missing_exits_2_naming_the_setting(tmp_path: Path) -> None:
    code, stderr = finish(start_probe(python_path=without_uvloop(tmp_path), event_loop="uvloop"))
    assert code == 2
    first = stderr.splitlines()[0]
    assert first.startswith("graflow-probe: GRAFLOW_PROBE_EVENT_LOOP=uvloop but uvloop cannot be imported")
    assert "no uvloop on this machine" in first and "GRAFLOW_PROBE_EVENT_LOOP=asyncio" in first
    assert [e["event"] for e in events(stderr)] == ["bad configuration"]


def test_an_unknown_event_loop_exits_2_naming_the_setting() -> None:
    code, stderr = finish(start_probe(event_loop="trio"))
    assert code == 2
    assert "graflow-probe: invalid settings: GRAFLOW_PROBE_EVENT_LOOP" in stderr.splitlines()[0]


def test_bad_settings_exit_2_with_one_line_on_stderr_and_a_log_line() -> None:
    code, stderr = finish(start_probe(shutdown_grace_s="soon"))
    assert code == 2
    assert "graflow-probe: invalid settings: GRAFLOW_PROBE_SHUTDOWN_GRACE_S" in stderr.splitlines()[0]
    [logged] = [e for e in events(stderr) if e["event"] == "bad configuration"]
    assert "GRAFLOW_PROBE_SHUTDOWN_GRACE_S" in logged["error"]


def test_a_configuration_error_of_the_service_exits_2_before_redis_is_needed() -> None:
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    code, stderr = finish(start_probe(misconfigured="true", redis_url=unreachable))
    assert code == 2
    assert "graflow-probe: GRAFLOW_PROBE_MISCONFIGURED is set" in stderr
    assert [e["event"] for e in events(stderr)] == ["bad configuration"]


def test_otlp_exporter_settings_that_cannot_work_exit_2_naming_them(tmp_path: Path) -> None:
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate")
    cases = (
        ({"otel_ca_file": str(ca)}, "GRAFLOW_PROBE_OTEL_CA_FILE="),
        ({"otel_ca_file": str(ca), "otel_insecure": "true"}, "GRAFLOW_PROBE_OTEL_INSECURE (plaintext)"),
        ({"otel_protocol": "http/protobuf"}, "invalid settings: GRAFLOW_PROBE_OTEL_PROTOCOL"),
    )
    for settings, named in cases:
        code, stderr = finish(start_probe(traces_exporter="otlp", redis_url=unreachable, **settings))
        assert code == 2, stderr
        assert named in stderr.splitlines()[0]


def test_an_unreachable_redis_exits_1_naming_the_url_without_its_password() -> None:
    port = free_port()
    code, stderr = finish(start_probe(redis_url=f"redis://probe:s3cret-pw@127.0.0.1:{port}/0"))
    assert code == 1
    assert "s3cret-pw" not in stderr
    [failed] = [e for e in events(stderr) if e["event"] == "could not start"]
    assert f"cannot reach Redis at redis://probe:***@127.0.0.1:{port}/0" in failed["error"]
    assert "GRAFLOW_PROBE_REDIS_URL" in failed["error"]
    assert "probe starting" not in [e["event"] for e in events(stderr)]


def test_a_redis_tls_file_that_cannot_be_used_exits_2_naming_it_without_the_password(tmp_path: Path) -> None:
    missing = tmp_path / "no-ca.pem"
    code, stderr = finish(
        start_probe(redis_url=f"rediss://probe:s3cret-pw@127.0.0.1:{free_port()}/0?ssl_ca_certs={missing}")
    )
    assert code == 2
    assert "s3cret-pw" not in stderr
    assert "GRAFLOW_PROBE_REDIS_URL=rediss://probe:***@" in stderr
    assert f"its TLS files cannot be used (ssl_ca_certs={missing})" in stderr


def test_parts_that_ask_to_stop_end_the_process_with_0(redis_url: str) -> None:
    code, stderr = finish(start_probe(redis_url=redis_url, stop_after_s="0.2"))
    assert code == 0, stderr
    assert "probe stopped" in [e["event"] for e in events(stderr)]


@LOOPS
def test_a_signal_during_start_up_cancels_it_and_stops_what_was_started(redis_url: str, loop: str) -> None:
    process = start_probe(redis_url=redis_url, start_delay_s="60", event_loop=loop)
    deadline = time.monotonic() + 30
    assert process.stderr is not None
    for line in process.stderr:  # up to the start-up's first line
        if '"probe starting"' in line or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGTERM)
    code, stderr = finish(process)
    assert code == 0, stderr
    names = [e["event"] for e in events(stderr)]
    assert "probe listening" not in names
    assert "probe stopped" in names


@LOOPS
def test_a_second_signal_exits_at_once_with_130(redis_url: str, loop: str) -> None:
    port = free_port()
    process = start_probe(
        redis_url=redis_url, listen_address=f"127.0.0.1:{port}", stop_hangs="true", event_loop=loop
    )
    wait_serving(process, port)
    process.send_signal(signal.SIGTERM)
    assert process.stderr is not None
    for line in process.stderr:  # stop() has begun (and hangs)
        if '"probe stopping"' in line:
            break
    process.send_signal(signal.SIGTERM)
    code, stderr = finish(process)
    assert code == 130, stderr
    assert "second signal; exiting now" in stderr


def test_metrics_are_served_on_their_port_while_the_service_runs(redis_url: str) -> None:
    port, metrics_port = free_port(), free_port()
    process = start_probe(
        redis_url=redis_url, listen_address=f"127.0.0.1:{port}", metrics_port=str(metrics_port)
    )
    try:
        wait_serving(process, port)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        # This process' own registry (prometheus-client's process collector) and Graflow's metrics.
        assert "process_cpu_seconds_total" in text
        assert "# TYPE graflow_tasks_started_total counter" in text
    finally:
        process.send_signal(signal.SIGTERM)
        code, stderr = finish(process)
    assert code == 0, stderr
    [served] = [e for e in events(stderr) if e["event"] == "metrics served"]
    assert served["address"] == f"127.0.0.1:{metrics_port}"
    with pytest.raises(OSError):  # stopped with the service
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2)


def test_a_metrics_port_in_use_exits_1_naming_the_setting(redis_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        code, stderr = finish(start_probe(redis_url=redis_url, metrics_port=str(busy)))
    assert code == 1
    [failed] = [e for e in events(stderr) if e["event"] == "could not start"]
    assert f"cannot serve metrics on 127.0.0.1:{busy}" in failed["error"]
    assert "GRAFLOW_PROBE_METRICS_PORT" in failed["error"]


def test_a_key_layout_other_than_the_one_redis_records_exits_2_naming_both(redis_url: str) -> None:
    bus = redis.Redis.from_url(redis_url)
    bus.delete(keys.LAYOUT_KEY)  # recorded by the other tests' probes (one cell)
    try:
        code, stderr = finish(start_probe(redis_url=redis_url, redis_cells="4", stop_after_s="0.2"))
        assert code == 0  # the first process records its layout

        code, stderr = finish(start_probe(redis_url=redis_url, stop_after_s="0.2"))
    finally:
        bus.delete(keys.LAYOUT_KEY)
        bus.close()

    assert code == 2
    (line,) = (line for line in stderr.splitlines() if line.startswith("graflow-probe: "))
    assert line.startswith("graflow-probe: this Redis holds data of the key layout 'cells=4 tagged=1'")
    assert "this process is set to 'cells=1 tagged=0'" in line and "REDIS_CELLS" in line
    assert "probe listening" not in [e["event"] for e in events(stderr)]
