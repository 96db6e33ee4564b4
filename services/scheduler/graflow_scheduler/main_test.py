"""The process entry point: settings from the environment, start-up, SIGTERM shutdown."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from graflow_runtime import keys
from graflow_runtime.local_redis import free_port
from graflow_runtime.settings import SettingsError, load_settings
from graflow_runtime.version import __version__

import graflow_scheduler.__main__  # noqa: F401 - run as a process below; imported so Pants ships it
from graflow_scheduler.settings import SchedulerSettings


def test_settings_come_from_prefixed_environment_variables(monkeypatch):
    monkeypatch.setenv("GRAFLOW_SCHEDULER_OUTCOME_BATCH", "64")
    monkeypatch.setenv("GRAFLOW_SCHEDULER_CONSUMER_NAME", "pod-7")
    settings = load_settings(SchedulerSettings)
    assert (settings.outcome_batch, settings.consumer_name, settings.listen_address) == (
        64,
        "pod-7",
        "127.0.0.1:50051",
    )
    assert settings.max_args_bytes == 1024 * 1024 and settings.retention_s == 7 * 24 * 3600


def test_bad_setting_is_reported_with_its_variable_name(monkeypatch):
    monkeypatch.setenv("GRAFLOW_SCHEDULER_OUTCOME_BATCH", "0")
    with pytest.raises(SettingsError, match="GRAFLOW_SCHEDULER_OUTCOME_BATCH"):
        load_settings(SchedulerSettings)


@pytest.mark.parametrize(
    ("variables", "problem"),
    [
        ({"FEEDBACK_WEBHOOK_URL": "hooks.slack.com/x"}, "GRAFLOW_SCHEDULER_FEEDBACK_WEBHOOK_URL"),
        ({"CONSOLE_URL": "ftp://console"}, "GRAFLOW_SCHEDULER_CONSOLE_URL"),
        (
            {"FEEDBACK_WEBHOOK_BACKOFF_MAX_S": "600", "FEEDBACK_WEBHOOK_CLAIM_IDLE_MS": "60000"},
            "CLAIM_IDLE_MS (60000) must exceed",
        ),
    ],
)
def test_bad_webhook_settings_are_refused_naming_the_variable(monkeypatch, variables, problem):
    for name, value in variables.items():
        monkeypatch.setenv(f"GRAFLOW_SCHEDULER_{name}", value)
    with pytest.raises(SettingsError, match=re.escape(problem)):
        load_settings(SchedulerSettings)


def _env(**variables: str) -> dict[str, str]:
    """The environment of a scheduler process: this one's, with ``GRAFLOW_SCHEDULER_<NAME>`` set."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        **{f"GRAFLOW_SCHEDULER_{name.upper()}": value for name, value in variables.items()},
    }


def _serving(redis_url: str, **variables: str) -> subprocess.Popen[str]:
    """A scheduler process on ``redis_url`` listening on any port, logging JSON to its stderr."""
    env = _env(
        redis_url=redis_url,
        listen_address="127.0.0.1:0",
        log_format="json",
        result_store_address="127.0.0.1:1",
        **variables,
    )
    command = [sys.executable, "-m", "graflow_scheduler"]
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)


def test_process_starts_listening_and_exits_cleanly_on_sigterm(redis_url):
    process = _serving(redis_url)
    try:
        listening = next(
            (r for r in _records(process.stderr) if r.get("event") == "scheduler listening"), None
        )
        assert listening is not None and listening["port"] > 0
        assert listening["version"] == __version__
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert any(r.get("event") == "scheduler stopped" for r in _records(process.stderr))
    finally:
        if process.poll() is None:
            process.kill()


async def test_a_process_with_four_cells_consumes_the_outcome_stream_of_each(four_cells, redis, redis_url):
    process = _serving(redis_url, redis_cells="4")
    try:
        assert any(r.get("event") == "scheduler listening" for r in _records(process.stderr))
        assert await redis.get(keys.LAYOUT_KEY) == b"cells=4 tagged=1"
        for cell in range(4):
            groups = await redis.xinfo_groups(keys.outcomes_stream(cell))
            assert [g["name"] for g in groups] == [keys.SCHEDULER_GROUP.encode()]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        totals = [r for r in _records(process.stderr) if r.get("event") == "outcome consumer totals"]
        assert sorted(r["cell"] for r in totals) == [0, 1, 2, 3]  # one consumer per cell, each stopped
    finally:
        if process.poll() is None:
            process.kill()


def test_process_with_a_bad_setting_exits_2_naming_it():
    process = subprocess.run(
        [sys.executable, "-m", "graflow_scheduler"],
        env=_env(outcome_batch="0"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert process.returncode == 2
    assert "GRAFLOW_SCHEDULER_OUTCOME_BATCH" in process.stderr


def _records(lines):
    for line in lines:
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue


@pytest.mark.parametrize("log_format", ["json", "console"])
@pytest.mark.parametrize("url", [
    "redis://user:s3cret-pw@127.0.0.1:{port}/0",
    "redis://:s3cret-pw@127.0.0.1:{port}/0",
    "redis://user:s3cret-pw@127.0.0.1:x{port}/0",
    "redis://user:s3cret-pw@127.0.0.1:{port}/zero",
    "redis://127.0.0.1:{port}/0?password=s3cret-pw",
    "redis://user:s3cret-pw@127.0.0.1:{port}/0?socket_timeout=abc",
    "http://user:s3cret-pw@127.0.0.1:{port}/0",
])
def test_unreachable_redis_is_reported_without_its_password(log_format, url):
    closed_port = free_port()
    process = subprocess.run(
        [sys.executable, "-m", "graflow_scheduler"],
        env=_env(
            redis_url=url.format(port=closed_port),
            listen_address="127.0.0.1:0",
            log_format=log_format,
            result_store_address="127.0.0.1:1",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = process.stdout + process.stderr
    assert process.returncode != 0
    assert "s3cret-pw" not in output, output
    assert "***" in output and "GRAFLOW_SCHEDULER_REDIS_URL" in output, output
