"""Settings: bad environment variables fail with a message naming each variable."""

from __future__ import annotations

import pytest

from graflow_runtime.settings import (
    DEFAULT_REDIS_URL,
    ServiceSettings,
    SettingsError,
    load_settings,
    settings_config,
    split_list,
)


class ExampleSettings(ServiceSettings):
    model_config = settings_config("GRAFLOW_EXAMPLE_")

    address: str = "127.0.0.1:0"


def test_defaults_work_without_any_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "RPC_TIMEOUT_S", "LOG_LEVEL", "ADDRESS"):
        monkeypatch.delenv(f"GRAFLOW_EXAMPLE_{name}", raising=False)
    settings = load_settings(ExampleSettings)
    assert settings.redis_url == DEFAULT_REDIS_URL
    assert settings.address == "127.0.0.1:0"


def test_values_come_from_prefixed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFLOW_EXAMPLE_REDIS_URL", "redis://redis:6379/1")
    monkeypatch.setenv("GRAFLOW_EXAMPLE_ADDRESS", "0.0.0.0:50051")
    monkeypatch.setenv("GRAFLOW_EXAMPLE_BREAKER_FAIL_MAX", "3")
    settings = load_settings(ExampleSettings)
    assert (settings.redis_url, settings.address, settings.breaker_fail_max) == (
        "redis://redis:6379/1", "0.0.0.0:50051", 3)


def test_every_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFLOW_EXAMPLE_RPC_TIMEOUT_S", "-1")
    monkeypatch.setenv("GRAFLOW_EXAMPLE_LOG_LEVEL", "loud")
    with pytest.raises(SettingsError) as caught:
        load_settings(ExampleSettings)
    message = str(caught.value)
    assert "GRAFLOW_EXAMPLE_RPC_TIMEOUT_S" in message
    assert "GRAFLOW_EXAMPLE_LOG_LEVEL" in message


@pytest.mark.parametrize("value", ["a, b", '["a", " b"]', ["a", "b", ""], "a,,b,"])
def test_list_settings_are_comma_separated_or_json_lists(value):
    assert split_list(value) == ["a", "b"]
