"""gRPC method handlers of the four shapes, for interceptors that wrap a servicer's behaviour."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

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
