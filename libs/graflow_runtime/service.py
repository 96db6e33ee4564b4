"""One start-up path for every service process: ``service_main(Service(name, settings, build))``.

Start-up order: settings -> logging -> the event loop (uvloop unless the ``EVENT_LOOP`` setting
says otherwise, :func:`graflow_runtime.lifecycle.event_loop`) -> tracing -> the service's parts,
built by ``build(settings, redis)`` (wiring only, no I/O; then the loop is logged) -> Redis
reachable (and durable, :func:`check_durability`) -> the parts started (their server, health
SERVING, background loops) -> running until SIGTERM/SIGINT (:mod:`graflow_runtime.lifecycle`) or
until the parts ask to stop -> the parts stopped (they run their start-up backwards and close the
Redis client, which they own from ``build`` on) -> tracing flushed. A signal during start-up
cancels it and stops what was started.

Exit codes (docs/configuration.md, "Exit codes"): 0 after a clean stop; 1 when Redis is unreachable
at start-up (logged with its URL, password redacted) or the parts fail to start; 2 for bad
configuration: invalid settings, uvloop asked for and missing, or a :class:`ConfigurationError`
raised by ``build`` (one line on stderr naming the problem, and a structured log line); 130 when a
second signal forces the exit.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, NoReturn, Protocol, runtime_checkable

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from graflow_runtime import keys
from graflow_runtime.errors import ConfigurationError
from graflow_runtime.lifecycle import (
    EXIT_CONFIGURATION,
    EXIT_FAILED,
    EventLoop,
    ShutdownSignal,
    event_loop,
    run_service,
)
from graflow_runtime.logs import configure_logging
from graflow_runtime.metrics import MetricsServer
from graflow_runtime.redis_client import REDIS_UNAVAILABLE, check_durability, check_layout, connect, redacted
from graflow_runtime.settings import SettingsError, SettingsT, layout_of, load_settings
from graflow_runtime.telemetry import configure_tracing

log = structlog.get_logger(__name__)


class ServiceParts(Protocol):
    """What a service builds: started once Redis answered, stopped at shutdown."""

    async def start(self) -> None:
        """Start serving: the server, health SERVING, background loops."""

    async def stop(self) -> None:
        """Run the start-up backwards (also after a partial start), then close the Redis client."""


@runtime_checkable
class StopsByItself(Protocol):
    """Parts that may decide to stop before any signal (a worker told to drain by the coordinator)."""

    async def stop_requested(self) -> None:
        """Return once the parts asked for the process to stop."""


@dataclass(frozen=True)
class Service(Generic[SettingsT]):
    # As in "graflow-<name>", its log lines and traces: "coordinator", "result-store"...
    name: str
    settings: type[SettingsT]
    # Wires the parts on the settings and a Redis client it takes over; raises ConfigurationError
    # for configuration that settings cannot check (the worker's task modules).
    build: Callable[[SettingsT, aioredis.Redis], ServiceParts]


class _CouldNotStart(Exception):
    """Start-up failed and was logged; the process exits with EXIT_FAILED."""


def service_main(service: Service[SettingsT]) -> None:
    """Run ``service`` as this process until it stops; returns after a clean stop, raises
    ``SystemExit`` with the exit code otherwise."""
    try:
        settings = load_settings(service.settings)
    except SettingsError as exc:
        configure_logging(service.name)
        _exit_misconfigured(service, exc)
    configure_logging(service.name, settings.log_level, settings.log_format)
    try:
        loop = event_loop(settings.event_loop, _variable(service, "EVENT_LOOP"))
    except ConfigurationError as exc:
        _exit_misconfigured(service, exc)
    try:
        flush_tracing = configure_tracing(
            service.name, settings.traces_exporter, settings.otel_endpoint, ca_file=settings.otel_ca_file,
            insecure=settings.otel_insecure, names=(_variable(service, "OTEL_CA_FILE"),
                                                    _variable(service, "OTEL_INSECURE")))
    except ConfigurationError as exc:
        _exit_misconfigured(service, exc)
    try:
        run_service(lambda shutdown: _serve(service, settings, loop, shutdown), loop)
    except ConfigurationError as exc:
        _exit_misconfigured(service, exc)
    except _CouldNotStart:
        raise SystemExit(EXIT_FAILED) from None
    finally:
        flush_tracing()


def _variable(service: Service[SettingsT], name: str) -> str:
    """The environment variable of the setting ``name`` of ``service``: GRAFLOW_<ROLE>_<NAME>."""
    return service.settings.model_config.get("env_prefix", "") + name


def _exit_misconfigured(service: Service[SettingsT], exc: ConfigurationError) -> NoReturn:
    sys.stderr.write(f"graflow-{service.name}: {exc}\n")
    log.error("bad configuration", error=str(exc))
    raise SystemExit(EXIT_CONFIGURATION) from exc


async def _serve(
    service: Service[SettingsT], settings: SettingsT, loop: EventLoop, shutdown: ShutdownSignal
) -> None:
    keys.configure(layout_of(settings))
    try:
        redis = connect(settings.redis_url, cluster=settings.redis_cluster)
    except (ValueError, RedisError) as exc:  # what redis-py raises for a URL it cannot use
        variable = _variable(service, "REDIS_URL")
        raise ConfigurationError(
            f"{variable}={redacted(settings.redis_url)} is not a usable Redis URL: {exc}"
        ) from None
    try:
        parts = service.build(settings, redis)
    except BaseException:
        await redis.aclose()
        raise
    log.info("event loop", loop=loop.name)  # the configuration was accepted
    metrics: MetricsServer | None = None
    try:
        metrics = _metrics_server(service, settings)
        if await _started(service, settings, redis, parts, shutdown):
            stops: list[Awaitable[object]] = [shutdown.wait()]
            if isinstance(parts, StopsByItself):
                stops.append(parts.stop_requested())
            await _first_of(*stops)
    finally:
        await parts.stop()
        if metrics is not None:
            metrics.stop()


def _metrics_server(service: Service[SettingsT], settings: SettingsT) -> MetricsServer | None:
    """The started ``/metrics`` server of the settings (None when METRICS_PORT is 0)."""
    if not settings.metrics_port:
        return None
    server = MetricsServer(settings.metrics_address, settings.metrics_port)
    try:
        server.start()
    except OSError as exc:
        log.error(
            "could not start",
            error=f"cannot serve metrics on {settings.metrics_address}:{settings.metrics_port} ({exc}); "
            f"free the port or set {_variable(service, 'METRICS_PORT')}",
        )
        raise _CouldNotStart from exc
    return server


async def _started(
    service: Service[SettingsT],
    settings: SettingsT,
    redis: aioredis.Redis,
    parts: ServiceParts,
    shutdown: ShutdownSignal,
) -> bool:
    """Check Redis and start the parts; False when a signal came first (start-up cancelled)."""
    try:
        await check_durability(redis)
        await check_layout(redis, keys.layout())
    except REDIS_UNAVAILABLE as exc:
        log.error(
            "could not start",
            error=f"cannot reach Redis at {redacted(settings.redis_url)} ({exc}); start it or set "
            f"{_variable(service, 'REDIS_URL')}",
        )
        raise _CouldNotStart from exc
    starting = asyncio.create_task(parts.start(), name=f"{service.name}-start")
    await _first_of(starting, shutdown.wait())  # a signal cancels the start-up
    try:
        await starting
    except asyncio.CancelledError:
        if not starting.cancelled():
            raise
        return False
    except Exception as exc:
        log.exception("could not start")
        raise _CouldNotStart from exc
    return True


async def _first_of(*awaitables: Awaitable[object]) -> None:
    """Wait until one of ``awaitables`` is done, then cancel the others."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
