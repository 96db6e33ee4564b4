"""The console's only way to the services: their gRPC contracts, called as the signed-in person.

One channel per service for the whole process (TLS, tracing and client metrics from
:func:`graflow_runtime.grpc_client.open_channel`), one circuit breaker per service
(:class:`graflow_runtime.grpc_client.Downstream`). The channels carry no token: each call adds the
person's own (``authorization: Bearer <token>`` metadata) through :meth:`Backend.as_person`, so the
services decide what the person may do, and the console can never do more than the person.

Errors become :class:`ConsoleError`: an HTTP status, the gRPC code and the service's message, which
the pages show in ``#flash.error`` and the JSON API returns as ``{"error": {...}}``.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from graflow_api.v1 import (
    coordinator_pb2_grpc,
    result_store_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from graflow_runtime.grpc_client import Downstream, DownstreamUnavailable, open_channel
from graflow_runtime.tls import channel_credentials

from graflow_console.settings import ConsoleSettings

# The longest token the console passes on (the services' tokens are far shorter).
MAX_TOKEN_LENGTH = 4096

# The HTTP status of each gRPC code a person can meet (anything else is a 502: the service failed).
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class ConsoleError(Exception):
    """A call the console could not do for the person: what to answer and why."""

    def __init__(self, status_code: int, grpc_code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.grpc_code = grpc_code
        self.message = message

    @classmethod
    def from_rpc(cls, service: str, exc: grpc.aio.AioRpcError) -> ConsoleError:
        code = exc.code()
        details = exc.details() or code.name
        if code == grpc.StatusCode.UNIMPLEMENTED:
            details = f"the {service} does not offer this yet (UNIMPLEMENTED: {details}); upgrade it"
        return cls(HTTP_STATUS.get(code, 502), code.name, details)


def check_token_text(token: str) -> None:
    """Refuse (401 UNAUTHENTICATED) a token that is not 1..4096 printable ASCII characters without
    spaces: gRPC cannot send a newline, NUL or non-ASCII in metadata, and fails on it with an error
    that is no AioRpcError (ExecuteBatchError), which would otherwise answer 500."""
    if not 0 < len(token) <= MAX_TOKEN_LENGTH or not all("!" <= char <= "~" for char in token):
        raise ConsoleError(
            401, "UNAUTHENTICATED",
            f"this is not a Graflow token: a token is 1 to {MAX_TOKEN_LENGTH} printable ASCII "
            "characters without spaces (docs/security.md)",
        )


@dataclass(frozen=True)
class _Service:
    name: str
    stub: Any
    downstream: Downstream


class Backend:
    """Channels, stubs and breakers of the three services, shared by every request."""

    def __init__(self, settings: ConsoleSettings) -> None:
        credentials = channel_credentials(settings)
        self._channels: list[grpc.aio.Channel] = []

        def service(name: str, address: str, stub_class: Any) -> _Service:
            channel = open_channel(address, credentials=credentials)
            self._channels.append(channel)
            downstream = Downstream(
                name,
                timeout_s=settings.rpc_timeout_s,
                fail_max=settings.breaker_fail_max,
                reset_s=settings.breaker_reset_s,
            )
            return _Service(name, stub_class(channel), downstream)

        self.scheduler = service("scheduler", settings.scheduler_address, scheduler_pb2_grpc.SchedulerStub)
        self.coordinator = service(
            "coordinator", settings.coordinator_address, coordinator_pb2_grpc.CoordinatorStub
        )
        self.result_store = service(
            "result-store", settings.result_store_address, result_store_pb2_grpc.ResultStoreStub
        )

    def as_person(self, token: str) -> Person:
        """Calls carrying ``token``; a token gRPC metadata cannot carry is refused first (401)."""
        check_token_text(token)
        return Person(self, token)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


class Person:
    """Calls made with one person's token: ``await person.scheduler("GetRun", request)``."""

    def __init__(self, backend: Backend, token: str) -> None:
        self._backend = backend
        self._metadata = (("authorization", f"Bearer {token}"),)

    async def scheduler(self, method: str, request: Any, *, timeout_s: float | None = None) -> Any:
        return await self._call(self._backend.scheduler, method, request, timeout_s)

    async def coordinator(self, method: str, request: Any, *, timeout_s: float | None = None) -> Any:
        return await self._call(self._backend.coordinator, method, request, timeout_s)

    async def result_store(self, method: str, request: Any, *, timeout_s: float | None = None) -> Any:
        return await self._call(self._backend.result_store, method, request, timeout_s)

    async def _call(self, service: _Service, method: str, request: Any, timeout_s: float | None) -> Any:
        bound = functools.partial(getattr(service.stub, method), metadata=self._metadata)
        try:
            return await service.downstream.call(bound, request, timeout_s=timeout_s)
        except DownstreamUnavailable as exc:
            raise ConsoleError(503, "UNAVAILABLE", f"{exc}; try again shortly") from exc
        except grpc.aio.AioRpcError as exc:
            raise ConsoleError.from_rpc(service.name, exc) from exc

    async def watch_run(self, run_id: str, cursor: str = "") -> AsyncIterator[scheduler_pb2.RunEvent]:
        """The run's events after ``cursor``, then live ones until it ends (WatchRun). A stream
        has no deadline and bypasses the breaker (it is long-lived by design); its errors are
        :class:`ConsoleError` like any call's."""
        call = self._backend.scheduler.stub.WatchRun(
            scheduler_pb2.WatchRunRequest(run_id=run_id, cursor=cursor), metadata=self._metadata
        )
        try:
            async for event in call:
                yield event
        except grpc.aio.AioRpcError as exc:
            raise ConsoleError.from_rpc("scheduler", exc) from exc
        finally:
            call.cancel()
