"""Server-side limits of every gRPC server (a real server on port 0, called through a real
channel): concurrent calls, open streams, and how long a handler may work."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from graflow_runtime.grpc_server import ServicerBinding, create_server
from graflow_runtime.server_limits import ServerLimits

RELEASE = asyncio.Event()


async def hold(request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
    await asyncio.wait_for(RELEASE.wait(), 30)
    return request


async def follow(request: bytes, _context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"open"
    await asyncio.wait_for(RELEASE.wait(), 30)
    yield b"done"


async def written(request: bytes, context: grpc.aio.ServicerContext) -> None:
    await context.write(b"open")
    await asyncio.wait_for(RELEASE.wait(), 30)
    await context.write(b"done")


PROBE = grpc.method_handlers_generic_handler(
    "graflow_test.Probe",
    {
        "Hold": grpc.unary_unary_rpc_method_handler(hold),
        "Follow": grpc.unary_stream_rpc_method_handler(follow),
        "Written": grpc.unary_stream_rpc_method_handler(written),
    },
)


async def serve(limits: ServerLimits) -> tuple[object, grpc.aio.Channel]:
    binding = ServicerBinding(
        lambda handler, server: server.add_generic_rpc_handlers((handler,)), PROBE, "graflow_test.Probe"
    )
    handle = create_server("127.0.0.1:0", [binding], name="probe", limits=limits)
    await handle.start()
    return handle, grpc.aio.insecure_channel(f"127.0.0.1:{handle.port}")


@pytest.fixture(autouse=True)
def _fresh_release() -> None:
    global RELEASE  # noqa: PLW0603 - the handlers above wait on this test's event
    RELEASE = asyncio.Event()


async def test_a_handler_that_works_longer_than_its_deadline_is_ended_naming_the_setting() -> None:
    handle, channel = await serve(ServerLimits(handler_timeout_s=0.2))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary("/graflow_test.Probe/Hold")(b"x", timeout=20)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "HANDLER_TIMEOUT_S" in caught.value.details() and "0.2 s" in caught.value.details()
        RELEASE.set()
        assert await channel.unary_unary("/graflow_test.Probe/Hold")(b"y", timeout=20) == b"y"
    finally:
        await channel.close()
        await handle.stop(None)


@pytest.mark.parametrize("method", ["Follow", "Written"])
async def test_the_stream_over_the_limit_is_resource_exhausted_and_the_others_go_on(method: str) -> None:
    handle, channel = await serve(ServerLimits(max_streams=2))
    try:
        calls = [channel.unary_stream(f"/graflow_test.Probe/{method}")(b"") for _ in range(2)]
        for call in calls:
            assert await call.read() == b"open"
        extra = channel.unary_stream(f"/graflow_test.Probe/{method}")(b"")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await extra.read()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "MAX_STREAMS" in caught.value.details() and "2 streams" in caught.value.details()
        RELEASE.set()
        for call in calls:
            assert await call.read() == b"done"
            assert await call.code() == grpc.StatusCode.OK
        # Their slots are free again.
        again = channel.unary_stream(f"/graflow_test.Probe/{method}")(b"")
        assert [r async for r in again] == [b"open", b"done"]
    finally:
        await channel.close()
        await handle.stop(None)


async def test_calls_over_the_concurrent_rpc_limit_are_resource_exhausted() -> None:
    handle, channel = await serve(ServerLimits(max_concurrent_rpcs=2))
    try:
        held = [asyncio.ensure_future(channel.unary_unary("/graflow_test.Probe/Hold")(b"a", timeout=20))
                for _ in range(2)]
        await asyncio.sleep(0.5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary("/graflow_test.Probe/Hold")(b"b", timeout=20)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        RELEASE.set()
        assert await asyncio.gather(*held) == [b"a", b"a"]
    finally:
        await channel.close()
        await handle.stop(None)


def test_limits_come_from_the_service_settings() -> None:
    from graflow_runtime.settings import ServiceSettings

    settings = ServiceSettings(max_concurrent_rpcs=7, max_streams=3, max_streams_per_connection=5,
                               handler_timeout_s=1.5)
    assert ServerLimits.from_settings(settings) == ServerLimits(
        max_concurrent_rpcs=7, max_streams=3, max_streams_per_connection=5, handler_timeout_s=1.5
    )
