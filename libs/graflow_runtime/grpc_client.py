"""gRPC clients: one channel factory per process and a breaker-guarded caller per downstream.

Every cross-service call goes through :class:`Downstream`: it applies the deadline, sends the auth
token, and runs inside that downstream's circuit breaker. Only infrastructure failures
(UNAVAILABLE, DEADLINE_EXCEEDED) count against the breaker; business errors (INVALID_ARGUMENT,
NOT_FOUND, RESOURCE_EXHAUSTED, ...) pass through untouched. RESOURCE_EXHAUSTED is the answer to one
request (a message over the 64 MiB limit, a limit of the service): retrying it or pausing for it
would wedge the caller, so it is the caller's to fail that request. pybreaker's decorator does not support
``async def``, so the awaited call is wrapped in ``with breaker.calling():``.

One breaker per downstream *service*, not per replica: the channel balances calls over the
service's replicas and gRPC retries an idempotent call that a failing replica dropped on another
one, so what reaches the breaker is a failure after those retries, i.e. of the service as a whole.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import pybreaker
import structlog
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from graflow_runtime import metrics
from graflow_runtime.grpc_options import client_channel_args
from graflow_runtime.telemetry import tracing_enabled

log = structlog.get_logger(__name__)

ResponseT = TypeVar("ResponseT")

INFRASTRUCTURE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
)


class DownstreamUnavailable(ConnectionError):
    """A downstream service is unreachable or its breaker is open; the caller should back off."""

    def __init__(self, downstream: str, detail: str) -> None:
        super().__init__(f"{downstream} unavailable: {detail}")
        self.downstream = downstream


def is_infrastructure_failure(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in INFRASTRUCTURE_CODES


class _Token:
    """Adds ``authorization: Bearer <token>`` to a call's metadata."""

    def __init__(self, token: str) -> None:
        self._metadata = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._metadata)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# One interceptor per call shape: a channel files each interceptor under the first shape it is an
# instance of, so one class of several shapes would intercept only unary-unary calls.
class _UnaryUnaryToken(_Token, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._with_token(client_call_details), request)


class _UnaryStreamToken(_Token, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._with_token(client_call_details), request)


class _StreamStreamToken(_Token, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
        return await continuation(self._with_token(client_call_details), request_iterator)


def open_channel(
    address: str, auth_token: str = "", credentials: grpc.ChannelCredentials | None = None
) -> grpc.aio.Channel:
    """An aio channel to ``address`` (one server, a comma-separated list of replicas or a gRPC
    target such as ``dns:///name:port``: :func:`graflow_runtime.grpc_options.client_channel_args`,
    which balances calls over replicas and retries idempotent ones) with Graflow's options, tracing
    (when an exporter is configured), (optionally) the auth token, and TLS when ``credentials`` are
    given (:func:`graflow_runtime.tls.channel_credentials`; None: plaintext). Raises
    :class:`graflow_runtime.addresses.AddressError` for an address that names no server."""
    target, options = client_channel_args(address)
    interceptors: list[Any] = list(aio_client_interceptors()) if tracing_enabled() else []
    interceptors.append(_ClientMetrics())
    if auth_token:
        shapes = (_UnaryUnaryToken, _UnaryStreamToken, _StreamStreamToken)
        interceptors.extend(shape(auth_token) for shape in shapes)
    if credentials is not None:
        return grpc.aio.secure_channel(
            target, credentials, options=options, interceptors=interceptors or None
        )
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors or None)


class _ClientMetrics(grpc.aio.UnaryUnaryClientInterceptor):
    """Time and status code of each unary call (graflow_runtime.metrics.GRPC_CLIENT_SECONDS)."""

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        method = client_call_details.method
        method = method.decode() if isinstance(method, bytes) else method
        code: grpc.StatusCode | None = grpc.StatusCode.UNKNOWN
        try:
            call = await continuation(client_call_details, request)
            code = await call.code()
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            raise
        finally:
            metrics.GRPC_CLIENT_SECONDS.labels(method, metrics.status_name(code)).observe(
                time.perf_counter() - started
            )
        return call


class _BreakerListener(pybreaker.CircuitBreakerListener):
    """Logs each state change, and exports the state and the trips (graflow_runtime.metrics)."""

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        new = getattr(new_state, "name", str(new_state))
        log.warning(
            "circuit breaker state changed",
            downstream=cb.name,
            old=getattr(old_state, "name", str(old_state)),
            new=new,
        )
        metrics.BREAKER_STATE.labels(cb.name).set(metrics.BREAKER_STATES.get(new, 0))
        if new == pybreaker.STATE_OPEN:
            metrics.BREAKER_TRIPS.labels(cb.name).inc()


class Downstream:
    """Calls to one downstream service: deadline + circuit breaker + specific errors."""

    def __init__(self, name: str, *, timeout_s: float, fail_max: int, reset_s: float) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_s,
            exclude=[lambda exc: not is_infrastructure_failure(exc)],
            listeners=[_BreakerListener()],
            name=name,
        )
        metrics.BREAKER_STATE.labels(name).set(metrics.BREAKER_STATES["closed"])

    @property
    def is_open(self) -> bool:
        return self.breaker.current_state == pybreaker.STATE_OPEN

    async def call(
        self,
        method: Callable[..., Awaitable[ResponseT]],
        request: Any,
        *,
        timeout_s: float | None = None,
    ) -> ResponseT:
        """Await ``method(request)`` under the breaker. Raises :class:`DownstreamUnavailable` for
        infrastructure failures and an open breaker; other ``AioRpcError`` propagate as they are."""
        try:
            with self.breaker.calling():
                return await method(request, timeout=timeout_s or self.timeout_s)
        except pybreaker.CircuitBreakerError as exc:
            raise DownstreamUnavailable(self.name, "circuit breaker open") from exc
        except grpc.aio.AioRpcError as exc:
            if exc.code() in INFRASTRUCTURE_CODES:
                raise DownstreamUnavailable(self.name, f"{exc.code().name}: {exc.details()}") from exc
            raise
