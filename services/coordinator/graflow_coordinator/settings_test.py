from __future__ import annotations

import os

import pytest

from graflow_runtime.settings import SettingsError, load_settings

from graflow_coordinator.settings import CoordinatorSettings


def test_defaults_work_on_one_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("GRAFLOW_COORDINATOR_")]:
        monkeypatch.delenv(name)

    settings = load_settings(CoordinatorSettings)

    assert settings.listen_address == "127.0.0.1:50052"
    assert (settings.heartbeat_interval_ms, settings.lease_timeout_ms) == (20_000, 40_000)
    assert settings.liveness_check_ms == 1_000
    assert settings.queues == ["default"]
    assert settings.max_deliveries == 5


@pytest.mark.parametrize("value", ["gpu, cpu", '["gpu", "cpu"]'])
def test_queues_are_read_as_a_comma_separated_or_json_list(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("GRAFLOW_COORDINATOR_QUEUES", value)

    assert load_settings(CoordinatorSettings).queues == ["gpu", "cpu"]


@pytest.mark.parametrize(
    ("name", "value", "mentions"),
    [
        ("GRAFLOW_COORDINATOR_QUEUES", "bad queue", "whitespace"),
        ("GRAFLOW_COORDINATOR_MAX_DELIVERIES", "0", "GRAFLOW_COORDINATOR_MAX_DELIVERIES"),
        ("GRAFLOW_COORDINATOR_HEARTBEAT_INTERVAL_MS", "40000", "lease_timeout_ms"),
    ],
)
def test_bad_values_fail_at_start_up_naming_the_problem(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, mentions: str
) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(SettingsError) as caught:
        load_settings(CoordinatorSettings)

    assert mentions in str(caught.value)
