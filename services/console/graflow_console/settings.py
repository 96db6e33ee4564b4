"""Typed settings of the web console (environment variables ``GRAFLOW_CONSOLE_*``).

The console reuses the services' common settings (:class:`ServiceSettings`): logging, traces, the
deadline and breaker of its calls, the TLS files (its HTTPS server presents TLS_CERT_FILE and
TLS_KEY_FILE; its channels to the services verify them against TLS_CA_FILE and present the same
certificate), and /metrics. It has no Redis and no credential of its own: every call carries the
signed-in person's token (docs/console.md), so the inherited REDIS_* settings are unused and
AUTH_TOKEN is refused.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from graflow_runtime.addresses import (
    DEFAULT_COORDINATOR_ADDRESS,
    DEFAULT_RESULT_STORE_ADDRESS,
    DEFAULT_SCHEDULER_ADDRESS,
)
from graflow_runtime.errors import ConfigurationError
from graflow_runtime.settings import ServiceAddress, ServiceSettings, settings_config
from graflow_runtime.tls import is_loopback

DEFAULT_CONSOLE_PORT = 8480
# The names a browser uses for a console bound to a loopback address (IPv6 without its brackets, as
# the host of a URL is compared).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class ConsoleSettings(ServiceSettings):
    model_config = settings_config("GRAFLOW_CONSOLE_")

    # Where the HTTP(S) server listens. A non-loopback host needs TLS (TLS_CERT_FILE/TLS_KEY_FILE)
    # or the INSECURE opt-out: people send their tokens to it.
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_CONSOLE_PORT, ge=0, le=65535)
    scheduler_address: ServiceAddress = DEFAULT_SCHEDULER_ADDRESS
    coordinator_address: ServiceAddress = DEFAULT_COORDINATOR_ADDRESS
    result_store_address: ServiceAddress = DEFAULT_RESULT_STORE_ADDRESS
    # Fernet key (url-safe base64 of 32 bytes) that encrypts the session cookie. Empty: a random
    # key per process (sessions end when it restarts; replicas cannot share sessions), logged as a
    # warning. Generate one with
    # python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())".
    session_key: str = Field(default="", repr=False)
    # How long a sign-in lasts, in seconds.
    session_max_age_s: int = Field(default=8 * 3600, ge=60)
    # The console's public base URL (https://console.example.com): the origin that forms must come
    # from, the base of the JSON API's links, and a Host the console answers. An https:// URL also
    # marks the cookies Secure behind a TLS-terminating proxy. Empty: the origin of each request
    # whose Host is allowed (ALLOWED_HOSTS, or the loopback names on a loopback bind).
    public_url: str = ""
    # Host names (comma-separated, without port) the console answers besides PUBLIC_URL's. Any other
    # Host header is refused (400), so a DNS-rebinding page cannot act as the console's origin. A
    # non-loopback bind needs PUBLIC_URL or ALLOWED_HOSTS.
    allowed_hosts: str = ""

    @field_validator("session_key")
    @classmethod
    def _check_session_key(cls, value: str) -> str:
        if value:
            try:
                raw = base64.urlsafe_b64decode(value.encode())
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) != 32:
                raise ValueError("must be a Fernet key: url-safe base64 of 32 bytes")
        return value

    @field_validator("auth_token")
    @classmethod
    def _no_own_credential(cls, value: str) -> str:
        if value:
            raise ValueError(
                "the console has no credential of its own: it calls the services with the signed-in "
                "person's token; unset it"
            )
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https:// (the console's public base URL)")
        return value.rstrip("/")

    @property
    def https(self) -> bool:
        return bool(self.tls_cert_file)

    @property
    def secure_cookies(self) -> bool:
        """Whether browsers reach the console over HTTPS: its own TLS, or a TLS-terminating proxy
        named by an https:// PUBLIC_URL (the console then sees plain HTTP but browsers do not)."""
        return self.https or self.public_url.startswith("https://")

    def trusted_hosts(self) -> list[str]:
        """The Host names the console answers: PUBLIC_URL's, ALLOWED_HOSTS, and the loopback names
        on a loopback bind. Raises :class:`ConfigurationError` for a non-loopback bind with neither
        setting: the console could not tell its own name from a rebound attacker's."""
        hosts = [name.strip().strip("[]").lower() for name in self.allowed_hosts.split(",") if name.strip()]
        if self.public_url:
            hosts.append((urlsplit(self.public_url).hostname or "").lower())
        if is_loopback(f"{self.host}:{self.port}"):
            hosts.extend(LOOPBACK_HOSTS)
        elif not hosts:
            raise ConfigurationError(
                f"GRAFLOW_CONSOLE_HOST={self.host} is not a loopback address: set "
                "GRAFLOW_CONSOLE_PUBLIC_URL (the URL people open) or GRAFLOW_CONSOLE_ALLOWED_HOSTS (the "
                "host names they use), so that requests naming another host are refused"
            )
        return list(dict.fromkeys(hosts))
