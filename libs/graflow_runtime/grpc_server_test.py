"""The server factory: binding, and the one mapping of handler errors to status codes (a real
server on port 0, called through a real channel)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from graflow_runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidRequest,
    NotFound,
    ServiceError,
    Unavailable,
)
from graflow_runtime.grpc_server import ServicerBinding, create_server

ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (InvalidRequest, NotFound, AlreadyExists, FailedPrecondition, Unavailable, ServiceError)
}


def fail(name: str) -> None:
    """Raise what the request names, as a handler would."""
    if name == "redis":
        raise RedisConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
    if name == "bug":
        raise RuntimeError("a bug")
    raise ERRORS[name](f"{name}: what the caller can do about it")


async def answer(request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
    fail(request.decode())
    return b"never"


async def stream(request: bytes, _context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"first"
    fail(request.decode())


async def written(request: bytes, context: grpc.aio.ServicerContext) -> None:
    await context.write(b"first")
    fail(request.decode())


PROBE = grpc.method_handlers_generic_handler(
    "graflow_test.Probe",
    {
        "Answer": grpc.unary_unary_rpc_method_handler(answer),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Written": grpc.unary_stream_rpc_method_handler(written),
    },
)


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    binding = ServicerBinding(
        lambda handler, server: server.add_generic_rpc_handlers((handler,)), PROBE, "graflow_test.Probe"
    )
    handle = create_server("127.0.0.1:0", [binding], name="probe")
    await handle.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{handle.port}") as opened:
            yield opened
    finally:
        await handle.stop(None)


async def test_a_taken_port_fails_the_start_instead_of_being_shared() -> None:
    first = create_server("127.0.0.1:0", [])
    await first.server.start()
    try:
        with pytest.raises((OSError, RuntimeError), match="bind|Failed"):
            create_server(f"127.0.0.1:{first.port}", [])
    finally:
        await first.server.stop(None)


CODES = [
    ("InvalidRequest", grpc.StatusCode.INVALID_ARGUMENT),
    ("NotFound", grpc.StatusCode.NOT_FOUND),
    ("AlreadyExists", grpc.StatusCode.ALREADY_EXISTS),
    ("FailedPrecondition", grpc.StatusCode.FAILED_PRECONDITION),
    ("Unavailable", grpc.StatusCode.UNAVAILABLE),
    ("ServiceError", grpc.StatusCode.INTERNAL),
]


@pytest.mark.parametrize(("error", "code"), CODES)
async def test_a_service_error_reaches_the_caller_as_its_code_and_message(
    channel: grpc.aio.Channel, error: str, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary("/graflow_test.Probe/Answer")(error.encode())
    expected = (code, f"{error}: what the caller can do about it")
    assert (caught.value.code(), caught.value.details()) == expected


@pytest.mark.parametrize("method", ["Stream", "Written"])
@pytest.mark.parametrize(("error", "code"), CODES)
async def test_a_streaming_call_ends_with_the_code_after_what_it_sent(
    channel: grpc.aio.Channel, method: str, error: str, code: grpc.StatusCode
) -> None:
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for response in channel.unary_stream(f"/graflow_test.Probe/{method}")(error.encode()):
            received.append(response)
    assert received == [b"first"]
    expected = (code, f"{error}: what the caller can do about it")
    assert (caught.value.code(), caught.value.details()) == expected


async def test_an_unreachable_redis_is_unavailable_with_what_to_do(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as answered:
        await channel.unary_unary("/graflow_test.Probe/Answer")(b"redis")
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        async for response in channel.unary_stream("/graflow_test.Probe/Stream")(b"redis"):
            received.append(response)
    assert received == [b"first"]
    expected = (
        "probe cannot reach Redis (Error 111 connecting to 127.0.0.1:1. Connection refused.); "
        "retry with backoff"
    )
    for caught in (answered, streamed):
        assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.UNAVAILABLE, expected)


async def test_any_other_error_stays_unknown(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary("/graflow_test.Probe/Answer")(b"bug")
    assert caught.value.code() == grpc.StatusCode.UNKNOWN
