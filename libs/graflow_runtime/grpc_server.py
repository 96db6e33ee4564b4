"""gRPC servers: one factory that every service uses.

``create_server`` binds the address (port 0 picks a free port), installs the interceptors every
server has (tracing, auth, per-call log context), the stock health service and server reflection,
and returns the server with its bound port. Start-up and shutdown order live in :mod:`lifecycle`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from graflow_runtime.grpc_options import SERVER_OPTIONS
from graflow_runtime.telemetry import tracing_enabled

_UNAUTHENTICATED_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer <token>`` (health and reflection stay open)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}"

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_UNAUTHENTICATED_METHODS):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        if metadata.get("authorization") == self._expected:
            return handler
        return _denying(handler)


_DENIED = "missing or wrong bearer token: send metadata 'authorization: Bearer <token>'"


def _denying(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that aborts with UNAUTHENTICATED."""

    async def deny(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _DENIED)

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(deny, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(deny, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
    return grpc.stream_stream_rpc_method_handler(deny, **kwargs)


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
    auth_token: str = "",
    extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> ServerHandle:
    """Build (not start) a server on ``address`` ("host:port", port 0 = any free port)."""
    interceptors: list[grpc.aio.ServerInterceptor] = [aio_server_interceptor()] if tracing_enabled() else []
    if auth_token:
        interceptors.append(AuthInterceptor(auth_token))
    interceptors.extend(extra_interceptors)
    server = grpc.aio.server(interceptors=interceptors or None, options=SERVER_OPTIONS)
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
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind gRPC server to {address}")
    return ServerHandle(server=server, port=port, health=health_servicer, service_names=names)

