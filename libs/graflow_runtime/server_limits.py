"""Server-side limits that every gRPC server applies, so that no caller can hold a service's
capacity alone (issue 14, "No single request takes a service down").

- ``max_concurrent_rpcs``: calls in progress at once (gRPC answers more with RESOURCE_EXHAUSTED).
- ``max_streams_per_connection``: HTTP/2 streams one connection may open at once (more wait on
  the client's side).
- ``max_streams``: long-lived calls with a streamed response (``WatchRun``, ``HeartbeatStream``) a
  process serves at once; the next one is refused with RESOURCE_EXHAUSTED naming the setting, and
  the open ones are not disturbed. Each watcher holds memory and (in the scheduler) a Redis
  connection, so their number is bounded per process.
- ``handler_timeout_s``: how long a handler with a single response may work. A handler still
  working then is cancelled and its call ends with DEADLINE_EXCEEDED naming the setting; a
  request's own ``wait_ms`` (``WaitRun``, ``SubmitRun``, bounded by ``MAX_WAIT_MS``) is added to it.

Health and reflection are exempt: they answer from memory.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from graflow_runtime.handlers import HEALTH_PREFIX, REFLECTION_PREFIX, WrappingInterceptor, shape_of
from graflow_runtime.settings import ServiceSettings

log = structlog.get_logger(__name__)



@dataclass(frozen=True)
class ServerLimits:
    """The limits of one server; the defaults are ServiceSettings'."""

    max_concurrent_rpcs: int = ServiceSettings.model_fields["max_concurrent_rpcs"].default
    max_streams_per_connection: int = ServiceSettings.model_fields["max_streams_per_connection"].default
    max_streams: int = ServiceSettings.model_fields["max_streams"].default
    handler_timeout_s: float = ServiceSettings.model_fields["handler_timeout_s"].default

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> ServerLimits:
        return cls(
            max_concurrent_rpcs=settings.max_concurrent_rpcs,
            max_streams_per_connection=settings.max_streams_per_connection,
            max_streams=settings.max_streams,
            handler_timeout_s=settings.handler_timeout_s,
        )

    def options(self) -> list[tuple[str, int]]:
        """The gRPC server options these limits set."""
        return [("grpc.max_concurrent_streams", self.max_streams_per_connection)]


class LimitsInterceptor(WrappingInterceptor):
    """Counts the open streamed calls (refusing the one over ``max_streams``) and bounds the work of
    every single-response handler by ``handler_timeout_s``."""

    def __init__(self, service: str, limits: ServerLimits) -> None:
        super().__init__()
        self._service = service
        self._limits = limits
        self._open_streams = 0

    @property
    def open_streams(self) -> int:
        return self._open_streams

    def passes(self, method: str) -> bool:
        return method.startswith((HEALTH_PREFIX, REFLECTION_PREFIX))

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        shape, _ = shape_of(handler)
        inner: Callable[..., Any] = getattr(handler, shape)
        if handler.response_streaming:
            behaviour = self._streamed(inner) if inspect.isasyncgenfunction(inner) else self._written(inner)
        elif inspect.iscoroutinefunction(inner):
            behaviour = self._bounded(inner, method)
        else:
            return handler
        return handler._replace(**{shape: behaviour})

    def _stream_refused(self) -> str | None:
        if self._open_streams < self._limits.max_streams:
            self._open_streams += 1
            return None
        log.warning("stream refused: too many open", open_streams=self._open_streams)
        return (
            f"{self._service} serves {self._limits.max_streams} streams (WatchRun, HeartbeatStream) "
            "already, its limit MAX_STREAMS: retry with backoff, or raise the setting"
        )

    def _streamed(self, inner: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def streamed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            refused = self._stream_refused()
            if refused:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
            try:
                async for response in inner(request, context):
                    yield response
            finally:
                self._open_streams -= 1

        return streamed

    def _written(self, inner: Callable[..., Any]) -> Callable[..., Any]:
        async def written(request: Any, context: grpc.aio.ServicerContext) -> Any:
            refused = self._stream_refused()
            if refused:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
            try:
                return await inner(request, context)
            finally:
                self._open_streams -= 1

        return written

    def _bounded(self, inner: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def answered(request: Any, context: grpc.aio.ServicerContext) -> Any:
            budget = self._limits.handler_timeout_s + getattr(request, "wait_ms", 0) / 1000
            deadline = asyncio.timeout(budget)
            try:
                async with deadline:
                    return await inner(request, context)
            except TimeoutError:
                if not deadline.expired():
                    raise  # the handler's own timeout, not ours
            log.warning("handler cancelled at its deadline", method=method, after_s=budget)
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"{self._service} gave up on {method} after {budget:g} s (its limit HANDLER_TIMEOUT_S "
                f"is {self._limits.handler_timeout_s:g} s, plus the request's wait_ms); retry later",
            )

        return answered
