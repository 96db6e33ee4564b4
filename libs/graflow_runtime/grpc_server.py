"""gRPC servers: one factory that every service uses.

``create_server`` binds the address (port 0 picks a free port; TLS when given credentials), installs
the interceptors every server has (tracing, auth, the error-to-status mapping, per-call log
context), the stock health service and server reflection, and returns the server with its bound
port. Start-up and shutdown
order live in :mod:`graflow_runtime.service`.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

from graflow_runtime import metrics
from graflow_runtime.audit import AuditLog
from graflow_runtime.auth import AccessInterceptor, Credentials
from graflow_runtime.errors import ServiceError
from graflow_runtime.grpc_options import SERVER_OPTIONS
from graflow_runtime.handlers import WrappingInterceptor, behaviour, same_shape
from graflow_runtime.redis_client import REDIS_UNAVAILABLE
from graflow_runtime.server_limits import LimitsInterceptor, ServerLimits
from graflow_runtime.settings import ServiceSettings
from graflow_runtime.telemetry import tracing_enabled
from graflow_runtime.tls import api_server_credentials

log = structlog.get_logger(__name__)

HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"


class ErrorStatusInterceptor(WrappingInterceptor):
    """The one mapping of what handlers raise to the status their callers receive.

    A :class:`~graflow_runtime.errors.ServiceError` becomes ``context.abort(error.code, message)``;
    an unreachable Redis becomes UNAVAILABLE ("<service> cannot reach Redis (...); retry with
    backoff"), which callers retry, instead of UNKNOWN with a stack trace. Anything else passes
    through untouched. Handlers that are coroutines (unary responses) and async generators
    (streamed responses, e.g. ``WatchRun``) are wrapped; a handler that writes its stream with
    ``context.write`` is a coroutine too.
    """

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        inner = behaviour(handler)
        if inspect.isasyncgenfunction(inner):

            async def streamed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    async for response in inner(request, context):
                        yield response
                except ServiceError as exc:
                    await context.abort(exc.code, str(exc))
                except REDIS_UNAVAILABLE as exc:
                    await self._redis_unavailable(context, method, exc)

            return same_shape(handler, streamed)
        if inspect.iscoroutinefunction(inner):

            async def answered(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await inner(request, context)
                except ServiceError as exc:
                    await context.abort(exc.code, str(exc))
                except REDIS_UNAVAILABLE as exc:
                    await self._redis_unavailable(context, method, exc)

            return same_shape(handler, answered)
        return handler

    async def _redis_unavailable(
        self, context: grpc.aio.ServicerContext, method: str, exc: BaseException
    ) -> None:
        log.warning("redis unavailable during a call", method=method, error=str(exc))
        metrics.REDIS_ERRORS.labels(type(exc).__name__).inc()
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, f"{self._service} cannot reach Redis ({exc}); retry with backoff"
        )


class MetricsInterceptor(WrappingInterceptor):
    """Per method, the time each call took and its status code
    (graflow_runtime.metrics.GRPC_SERVER_SECONDS). Outside the auth interceptor, so refused calls
    count too. Health checks are left out (each caller's channel holds a Watch stream per replica)."""

    def passes(self, method: str) -> bool:
        return method.startswith(HEALTH_METHOD_PREFIX)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        inner = behaviour(handler)
        if inspect.isasyncgenfunction(inner):

            async def streamed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started = time.perf_counter()
                failed = True
                try:
                    async for response in inner(request, context):
                        yield response
                    failed = False
                finally:
                    _observe(method, context, started, failed)

            return same_shape(handler, streamed)
        if inspect.iscoroutinefunction(inner):

            async def answered(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                failed = True
                try:
                    response = await inner(request, context)
                    failed = False
                    return response
                finally:
                    _observe(method, context, started, failed)

            return same_shape(handler, answered)
        return handler


def _observe(method: str, context: grpc.aio.ServicerContext, started: float, failed: bool) -> None:
    code = context.code()
    name = "UNKNOWN" if failed and code is None else metrics.status_name(code)
    metrics.GRPC_SERVER_SECONDS.labels(method, name).observe(time.perf_counter() - started)


@dataclass
class ServicerBinding:
    """A servicer and the generated function that adds it to a server."""

    add_to_server: Callable[[Any, grpc.aio.Server], None]
    servicer: Any
    # Fully qualified service name, e.g. "graflow_api.v1.Scheduler" (for health and reflection).
    service_name: str


@dataclass
class ServerHandle:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: Sequence[str]

    async def start(self) -> None:
        """Accept calls and report SERVING."""
        await self.server.start()
        await self.set_serving(True)

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING, then stop accepting calls and let in-flight calls finish."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


def create_server(
    address: str,
    bindings: Iterable[ServicerBinding],
    *,
    name: str = "service",
    credentials: Credentials | None = None,
    audit: AuditLog | None = None,
    extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    server_credentials: grpc.ServerCredentials | None = None,
    limits: ServerLimits | None = None,
) -> ServerHandle:
    """Build (not start) a server on ``address`` ("host:port", port 0 = any free port) for the
    service ``name`` (as its error messages call it, e.g. "coordinator").

    ``credentials``: who may call (:mod:`graflow_runtime.auth`; None = anybody, auth off);
    ``audit``: where mutating calls are recorded; ``server_credentials``: TLS (a secure port,
    :func:`graflow_runtime.tls.api_server_credentials`); ``limits``: ``ServerLimits.from_settings``
    (the settings' defaults when None).
    """
    limits = limits or ServerLimits()
    # Health calls are not traced: the callers' channels hold a health Watch stream per replica
    # (client-side health checking, graflow_runtime.grpc_options), which the tracing interceptor
    # failed (it does not support handlers that write their stream with ``context.write``, as the
    # stock health service's Watch does), so every replica looked unhealthy with tracing on.
    interceptors: list[grpc.aio.ServerInterceptor] = (
        [aio_server_interceptor(filter_=filters.negate(filters.health_check()))] if tracing_enabled() else []
    )
    interceptors.append(MetricsInterceptor())
    if credentials is not None or audit is not None:
        interceptors.append(AccessInterceptor(credentials, audit))
    interceptors.append(LimitsInterceptor(name, limits))
    interceptors.append(ErrorStatusInterceptor(name))
    interceptors.extend(extra_interceptors)
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[*SERVER_OPTIONS, *limits.options()],
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
    )
    bindings = list(bindings)
    names = [b.service_name for b in bindings]
    for binding in bindings:
        binding.add_to_server(binding.servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    if server_credentials is not None:
        port = server.add_secure_port(address, server_credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind gRPC server to {address}")
    return ServerHandle(server=server, port=port, health=health_servicer, service_names=names)


def create_api_server(
    address: str,
    bindings: Iterable[ServicerBinding],
    *,
    name: str,
    settings: ServiceSettings,
    audit: AuditLog,
) -> ServerHandle:
    """A service's API server as its settings say: TLS (and the refusal to serve a non-loopback
    address unprotected, :func:`graflow_runtime.tls.api_server_credentials`), who may call, the
    server-side limits; mutating calls recorded in ``audit``."""
    return create_server(
        address,
        bindings,
        name=name,
        server_credentials=api_server_credentials(settings, address),
        limits=ServerLimits.from_settings(settings),
        credentials=settings.accepted_credentials(),
        audit=audit,
    )
