"""Typed settings read from environment variables, one prefix per service.

Every service declares a subclass of :class:`ServiceSettings` with its own ``env_prefix``
(``GRAFLOW_SCHEDULER_``, ``GRAFLOW_WORKER_``...). Bad values fail at start-up with a message naming
the variable; every default works on one machine.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from graflow_runtime.addresses import channel_target
from graflow_runtime.audit import DEFAULT_AUDIT_MAXLEN
from graflow_runtime.auth import Credentials, parse_cert_role, parse_token_entry
from graflow_runtime.errors import ConfigurationError
from graflow_runtime.keys import MAX_CELLS, Layout
from graflow_runtime.signing import BusKeys

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

# The event loop of a service process; "auto": uvloop when it is installed, asyncio otherwise.
EventLoopChoice = Literal["auto", "uvloop", "asyncio"]


def _service_address(value: str) -> str:
    channel_target(value)  # AddressError (a ValueError) names the entry; the error names the variable
    return value


# Where a process reaches another service: ``host:port``, its replicas ``host:port,host:port``, or a
# gRPC target such as ``dns:///name:port`` (graflow_runtime.addresses); checked at start-up.
ServiceAddress = Annotated[str, AfterValidator(_service_address)]


class SettingsError(ConfigurationError):
    """Raised when environment variables hold invalid settings."""


class ServiceSettings(BaseSettings):
    """Settings every service has. Subclasses set ``model_config = settings_config("PREFIX_")``."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    redis_url: str = DEFAULT_REDIS_URL
    # The Redis is a Redis Cluster: the URL names any of its nodes (graflow_runtime.redis_client).
    redis_cluster: bool = False
    # Cells of the keyspace (graflow_runtime.keys, docs/architecture.md "Redis Cluster: cells"): the
    # same in every process of a deployment, fixed for the life of its data.
    redis_cells: int = Field(default=1, ge=1, le=MAX_CELLS)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # "auto": JSON when stderr is not a terminal, human-readable when it is.
    log_format: Literal["auto", "json", "console"] = "auto"
    # ---- Traces (graflow_runtime.telemetry; docs/configuration.md "Traces") ----
    # "none", "console" (spans to stderr), or "otlp" (to the collector at otel_endpoint).
    traces_exporter: Literal["none", "console", "otlp"] = "none"
    otel_endpoint: str = "127.0.0.1:4317"
    # OTLP over gRPC only: the OTLP/HTTP exporter (http/protobuf) is not a dependency.
    otel_protocol: Literal["grpc"] = "grpc"
    # TLS to the collector, verified against this CA (PEM file); empty: the system's CAs.
    otel_ca_file: str = ""
    # Plaintext to the collector instead of TLS (e.g. an agent on the same host); not with a CA.
    otel_insecure: bool = False
    # The bearer token this process sends on its calls to other services (a worker's, a
    # scheduler's to the result-store). A server with neither AUTH_TOKENS nor AUTH_CERT_ROLES also
    # accepts it, as role admin (the single shared token of before roles; docs/security.md).
    auth_token: str = ""
    # Transport security (graflow_runtime.tls): PEM files read at start-up. A server with a certificate
    # and key serves TLS; channels to other services use TLS when a CA is set, verify the server
    # against it and send the certificate and key as client certificate when set.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_file: str = ""
    # mTLS: the API server accepts only clients whose certificate the CA signed.
    tls_client_auth: bool = False
    # Lets an API server listen on a non-loopback address with neither TLS nor credentials (a
    # warning is logged at every start); without it such a start is refused (exit code 2).
    insecure: bool = False
    # Tokens a server accepts: entries "<role>:<sha256 hex of the token>" (JSON list or
    # comma-separated); two of one role are valid at once while tokens rotate.
    auth_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # mTLS identities a server accepts: entries "<certificate common name>=<role>".
    auth_cert_roles: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Approximate cap of the audit stream gf:audit (XADD MAXLEN ~).
    audit_maxlen: int = Field(default=DEFAULT_AUDIT_MAXLEN, gt=0)
    # Seconds a service waits for in-flight work on SIGTERM before it stops anyway.
    shutdown_grace_s: float = Field(default=10.0, gt=0)
    # Deadline of every call to another service, in seconds.
    rpc_timeout_s: float = Field(default=5.0, gt=0)
    # Circuit breaker: consecutive infrastructure failures that open it, and seconds before a probe.
    breaker_fail_max: int = Field(default=5, ge=1)
    breaker_reset_s: float = Field(default=2.0, gt=0)
    # graflow_runtime.lifecycle.event_loop.
    event_loop: EventLoopChoice = "auto"
    # Server-side limits of the service's gRPC server (graflow_runtime.server_limits): calls in
    # progress at once, HTTP/2 streams per connection, streamed calls open at once (WatchRun,
    # HeartbeatStream), and seconds a single-response handler may work.
    max_concurrent_rpcs: int = Field(default=10_000, ge=1)
    max_streams_per_connection: int = Field(default=1000, ge=1)
    max_streams: int = Field(default=1000, ge=1)
    handler_timeout_s: float = Field(default=60.0, gt=0)
    # Prometheus /metrics of this process (graflow_runtime.metrics, docs/operations.md): its port,
    # 0 = off (the default: processes of one machine would collide on a fixed port; the deploy/
    # manifests set one), and the address it listens on (0.0.0.0 to be scraped from elsewhere).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_address: str = "127.0.0.1"
    # Seconds between two measurements of the fleet-wide gauges by the replica holding the lease
    # (graflow_runtime.fleet; the scheduler and the coordinator); the lease lives 3 times as long.
    fleet_metrics_interval_s: float = Field(default=5.0, gt=0)

    @field_validator("auth_tokens", "auth_cert_roles", mode="before")
    @classmethod
    def _parse_lists(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("auth_tokens")
    @classmethod
    def _check_tokens(cls, value: list[str]) -> list[str]:
        for entry in value:
            parse_token_entry(entry)
        return value

    @field_validator("auth_cert_roles")
    @classmethod
    def _check_cert_roles(cls, value: list[str]) -> list[str]:
        for entry in value:
            parse_cert_role(entry)
        return value

    def accepted_credentials(self) -> Credentials | None:
        """What this service's gRPC server accepts (None: auth off)."""
        return Credentials.from_settings(self.auth_tokens, self.auth_cert_roles, self.auth_token)


class BusSettings(ServiceSettings):
    """Settings of the processes that write or read the bus's streams (scheduler, coordinator,
    worker): the HMAC keys of its messages (graflow_runtime.signing; docs/security.md)."""

    # "<key id>:<secret>" items (secret: hex or base64, >= 32 bytes); every one verifies.
    signing_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, repr=False)
    # The key that signs; may stay empty when exactly one key is listed. No keys: unsigned (dev).
    signing_key_id: str = ""

    @field_validator("signing_keys", mode="before")
    @classmethod
    def _parse_signing_keys(cls, value: Any) -> Any:
        return split_list(value)

    def bus_keys(self) -> BusKeys:
        """The keys these settings name; raises :class:`SigningKeysError` (a ConfigurationError:
        exit 2) naming the variable."""
        return BusKeys.from_settings(
            self.signing_keys, self.signing_key_id, prefix=self.model_config.get("env_prefix", "")
        )


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


def split_list(value: Any) -> Any:
    """A list setting from ``"a,b"`` (environment), a JSON list ``'["a","b"]'`` or a real list: its
    items stripped, empty ones dropped. Anything else is left to pydantic to reject."""
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else text.split(",")
    if isinstance(value, (list, tuple)):
        return [str(item).strip() for item in value if str(item).strip()]
    return value


def settings_config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, extra="ignore", frozen=True)


def load_settings(cls: type[SettingsT]) -> SettingsT:
    """Read ``cls`` from the environment or raise :class:`SettingsError` naming every bad variable."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        # A check of several fields together (a model validator) has no location: its message
        # names the variables itself.
        problems = "; ".join(
            f"{prefix}{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            if err["loc"]
            else err["msg"]
            for err in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from exc


def layout_of(settings: ServiceSettings) -> Layout:
    """The key layout the settings name (graflow_runtime.keys.configure)."""
    return Layout(cells=settings.redis_cells, cluster=settings.redis_cluster)
