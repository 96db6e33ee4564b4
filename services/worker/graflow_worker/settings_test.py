"""Worker settings from GRAFLOW_WORKER_* variables."""

from __future__ import annotations

import os
import re
import socket

import pytest

from graflow_runtime.settings import SettingsError, load_settings

from graflow_worker.settings import WorkerSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("GRAFLOW_WORKER_"):
            monkeypatch.delenv(name)


def test_comma_separated_queues_and_task_modules(monkeypatch):
    monkeypatch.setenv("GRAFLOW_WORKER_QUEUES", "default, reports")
    monkeypatch.setenv("GRAFLOW_WORKER_TASK_MODULES", "app.tasks,app.more")
    settings = load_settings(WorkerSettings)
    assert settings.queues == ["default", "reports"]
    assert settings.task_modules == ["app.tasks", "app.more"]


def test_json_lists_are_accepted_too(monkeypatch):
    monkeypatch.setenv("GRAFLOW_WORKER_TASK_MODULES", '["app.tasks"]')
    assert load_settings(WorkerSettings).task_modules == ["app.tasks"]


def test_defaults_work_on_one_machine(monkeypatch):
    monkeypatch.setenv("GRAFLOW_WORKER_TASK_MODULES", "app.tasks")
    settings = load_settings(WorkerSettings)
    assert settings.queues == ["default"]
    assert settings.concurrency == 64
    assert settings.health_listen_address == "127.0.0.1:0"
    assert settings.coordinator_address == "127.0.0.1:50052"
    assert settings.result_store_address == "127.0.0.1:50053"
    assert settings.inline_result_max_bytes == 64 * 1024
    assert re.fullmatch(rf"{re.escape(socket.gethostname())}-{os.getpid()}-[0-9a-f]{{4}}", settings.worker_id)


def test_missing_task_modules_fail_fast_with_a_clear_message():
    with pytest.raises(SettingsError, match="GRAFLOW_WORKER_TASK_MODULES.*comma-separated list of modules"):
        load_settings(WorkerSettings)


def test_bad_values_name_the_variable(monkeypatch):
    monkeypatch.setenv("GRAFLOW_WORKER_TASK_MODULES", "app.tasks")
    monkeypatch.setenv("GRAFLOW_WORKER_CONCURRENCY", "0")
    with pytest.raises(SettingsError, match="GRAFLOW_WORKER_CONCURRENCY"):
        load_settings(WorkerSettings)
    monkeypatch.setenv("GRAFLOW_WORKER_CONCURRENCY", "2")
    monkeypatch.setenv("GRAFLOW_WORKER_QUEUES", " , ")
    with pytest.raises(SettingsError, match="GRAFLOW_WORKER_QUEUES: .*at least one queue"):
        load_settings(WorkerSettings)


def test_inline_results_are_bounded_and_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("GRAFLOW_WORKER_TASK_MODULES", "app.tasks")
    monkeypatch.setenv("GRAFLOW_WORKER_INLINE_RESULT_MAX_BYTES", "0")
    assert load_settings(WorkerSettings).inline_result_max_bytes == 0
    monkeypatch.setenv("GRAFLOW_WORKER_INLINE_RESULT_MAX_BYTES", str(1024 * 1024 + 1))
    with pytest.raises(SettingsError, match="GRAFLOW_WORKER_INLINE_RESULT_MAX_BYTES"):
        load_settings(WorkerSettings)


def test_addresses_of_replicas_are_accepted_and_a_bad_entry_names_the_variable(monkeypatch):
    monkeypatch.setenv("GRAFLOW_WORKER_TASK_MODULES", "app.tasks")
    monkeypatch.setenv("GRAFLOW_WORKER_SCHEDULER_ADDRESS", "127.0.0.1:50051,127.0.0.1:50061")
    monkeypatch.setenv("GRAFLOW_WORKER_COORDINATOR_ADDRESS", "dns:///coordinator:50052")
    settings = load_settings(WorkerSettings)
    assert settings.scheduler_address == "127.0.0.1:50051,127.0.0.1:50061"
    assert settings.coordinator_address == "dns:///coordinator:50052"
    monkeypatch.setenv("GRAFLOW_WORKER_RESULT_STORE_ADDRESS", "127.0.0.1:50053,127.0.0.1")
    problem = "GRAFLOW_WORKER_RESULT_STORE_ADDRESS.*'127.0.0.1' is not host:port"
    with pytest.raises(SettingsError, match=problem):
        load_settings(WorkerSettings)
