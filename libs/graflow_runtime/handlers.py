"""gRPC method handlers of the four shapes, and the base of the server interceptors that wrap a
servicer's behaviour (auth, limits, error statuses)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

# The stock services every server has (graflow_runtime.grpc_server): they answer from memory.
HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIX = "/grpc.reflection."

HANDLER_SHAPES = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


def shape_of(handler: grpc.RpcMethodHandler) -> tuple[str, Callable[..., grpc.RpcMethodHandler]]:
    """The name of ``handler``'s shape ("unary_unary"...) and the factory of handlers of it."""
    return next((name, factory) for name, factory in HANDLER_SHAPES if getattr(handler, name))


def behaviour(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    """The function that answers calls of ``handler``."""
    return getattr(handler, shape_of(handler)[0])


def same_shape(handler: grpc.RpcMethodHandler, answer: Callable[..., Any]) -> grpc.RpcMethodHandler:
    """A handler of the same shape and serialization as ``handler`` that runs ``answer``."""
    return shape_of(handler)[1](
        answer,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """A server interceptor that answers each method with a wrapped form of the servicer's handler:
    made by :meth:`wrap` on the method's first call and reused (the servicer's handler is the same
    object on every call). Methods for which :meth:`passes` is true get the handler unwrapped."""

    def __init__(self) -> None:
        # method -> (the servicer's handler, its wrapped form)
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def passes(self, method: str) -> bool:
        """Whether calls of ``method`` (its full name) skip this interceptor."""
        return False

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        raise NotImplementedError

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or self.passes(method):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self.wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped
