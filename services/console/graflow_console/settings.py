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

from pydantic import Field, field_validator

from graflow_runtime.addresses import (
    DEFAULT_COORDINATOR_ADDRESS,
    DEFAULT_RESULT_STORE_ADDRESS,
    DEFAULT_SCHEDULER_ADDRESS,
)
from graflow_runtime.settings import ServiceAddress, ServiceSettings, settings_config

DEFAULT_CONSOLE_PORT = 8480


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
    # from behind a proxy that rewrites Host. Empty: the origin of each request itself.
    public_url: str = ""

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
