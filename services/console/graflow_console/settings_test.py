"""Which Host names the console answers, and when its cookies are Secure."""

from __future__ import annotations

import pytest

from graflow_runtime.errors import ConfigurationError

from graflow_console.settings import LOOPBACK_HOSTS, ConsoleSettings


def test_a_loopback_bind_answers_the_loopback_names():
    assert ConsoleSettings(host="127.0.0.1").trusted_hosts() == list(LOOPBACK_HOSTS)
    assert "localhost" in ConsoleSettings(host="localhost").trusted_hosts()


def test_a_non_loopback_bind_needs_public_url_or_allowed_hosts():
    with pytest.raises(ConfigurationError, match="GRAFLOW_CONSOLE_ALLOWED_HOSTS"):
        ConsoleSettings(host="0.0.0.0").trusted_hosts()
    public = ConsoleSettings(host="0.0.0.0", public_url="https://Console.Example.com:8443/")
    assert public.trusted_hosts() == ["console.example.com"]
    listed = ConsoleSettings(host="0.0.0.0", allowed_hosts=" console.internal , 10.0.0.5")
    assert listed.trusted_hosts() == ["console.internal", "10.0.0.5"]


def test_cookies_are_secure_under_tls_or_behind_an_https_public_url():
    assert not ConsoleSettings().secure_cookies
    assert not ConsoleSettings(public_url="http://console.example.com").secure_cookies
    assert ConsoleSettings(public_url="https://console.example.com").secure_cookies
