"""Server interceptor mapping an unreachable Redis to UNAVAILABLE (instead of UNKNOWN with a
stack trace), for every method of the scheduler."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog

from graflow_runtime.redis_client import REDIS_UNAVAILABLE

log = structlog.get_logger(__name__)

_MESSAGE = "run state store (Redis) unavailable: {error}; retry with backoff"


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    log.warning("redis unavailable during a call", error=str(exc))
    await context.abort(grpc.StatusCode.UNAVAILABLE, _MESSAGE.format(error=exc))


class RedisUnavailableInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await inner(request, context)
                except REDIS_UNAVAILABLE as exc:
                    await _abort(context, exc)

            return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    async for response in inner_stream(request, context):
                        yield response
                except REDIS_UNAVAILABLE as exc:
                    await _abort(context, exc)

            return grpc.unary_stream_rpc_method_handler(stream, **kwargs)
        return handler
