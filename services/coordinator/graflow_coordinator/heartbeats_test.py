"""Heartbeat streams: each request renews the lease and is answered; a stream that breaks without
the worker's goodbye has the worker declared dead at once (connection lost), long before its lease
would expire; a goodbye, or the coordinator stopping, declares nobody dead."""

from __future__ import annotations

import grpc
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from graflow_api.v1 import coordinator_pb2, coordinator_pb2_grpc
from graflow_runtime import keys
from graflow_runtime.grpc_client import open_channel

from graflow_coordinator.conftest import StartCoordinator, delivery, eventually, read_outcomes
from graflow_coordinator.liveness_test import STREAM, read_as
from graflow_coordinator.workers_test import registration

# Nobody's lease can expire during a test: whatever is declared dead was declared so by its stream.
LONG_LEASE = {"heartbeat_interval_ms": 1_000, "lease_timeout_ms": 600_000, "liveness_check_ms": 50}


def beat(worker_id: str = "w1", in_flight: int = 0, **fields: object) -> coordinator_pb2.HeartbeatRequest:
    return coordinator_pb2.HeartbeatRequest(worker_id=worker_id, in_flight=in_flight, **fields)


async def registered(redis: aioredis.Redis, worker_id: str) -> bool:
    return await redis.zscore(keys.WORKERS_INDEX, worker_id) is not None


async def worker_holding_one_delivery(app, redis: aioredis.Redis) -> tuple[grpc.aio.Channel, object]:
    """w1 registered on a channel of its own, holding delivery ``a``, with its stream open and
    answered once."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)
    await stub.RegisterWorker(registration("w1"))
    await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("a")]))
    await read_as(redis, "w1")
    call = stub.HeartbeatStream()
    await call.write(beat(in_flight=1))
    assert await call.read() == coordinator_pb2.HeartbeatResponse()
    return channel, call


async def test_each_streamed_heartbeat_renews_the_lease_and_is_answered(
    start_coordinator: StartCoordinator, open_stub, redis: aioredis.Redis
) -> None:
    stub = open_stub(await start_coordinator(**LONG_LEASE))
    await stub.RegisterWorker(registration("w1"))
    call = stub.HeartbeatStream()
    for in_flight in (2, 3):
        before = await redis.zscore(keys.WORKERS_INDEX, "w1")
        await call.write(beat(in_flight=in_flight))
        assert await call.read() == coordinator_pb2.HeartbeatResponse()
        assert await redis.zscore(keys.WORKERS_INDEX, "w1") >= before
        assert await redis.hget(keys.worker_info("w1"), "in_flight") == str(in_flight).encode()
    await call.write(beat(leaving=True))
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK


async def test_a_stream_that_breaks_without_a_goodbye_has_the_worker_declared_dead_at_once(
    start_coordinator: StartCoordinator, redis: aioredis.Redis
) -> None:
    app = await start_coordinator(**LONG_LEASE)
    channel, _call = await worker_holding_one_delivery(app, redis)

    await channel.close()  # the connection goes, as when the worker's process dies

    [lost] = await eventually(lambda: read_outcomes(redis), what="w1's attempt to be reported lost")
    assert lost.node_id == "a" and lost.worker_lost and lost.error.type == "WorkerLost"
    assert "worker w1 was declared dead: connection lost" in lost.error.message
    await eventually(lambda: _gone(redis, "w1"), what="w1 to leave the registry")
    assert (await redis.xpending(STREAM, keys.WORKER_GROUP))["pending"] == 0


async def test_a_cancelled_stream_also_counts_as_a_lost_connection(
    start_coordinator: StartCoordinator, redis: aioredis.Redis
) -> None:
    app = await start_coordinator(**LONG_LEASE)
    channel, call = await worker_holding_one_delivery(app, redis)
    try:
        call.cancel()
        [lost] = await eventually(lambda: read_outcomes(redis), what="w1's attempt to be reported lost")
    finally:
        await channel.close()
    assert "connection lost" in lost.error.message


async def test_a_live_worker_whose_stream_broke_is_told_to_register_again(
    start_coordinator: StartCoordinator, open_stub, redis: aioredis.Redis
) -> None:
    """A network blip: the worker is alive, but its stream broke, so it was declared dead and its
    work reclaimed (its late commits are fenced). Its next stream gets NOT_FOUND; once registered
    again, it heartbeats as before."""
    app = await start_coordinator(**LONG_LEASE)
    channel, _call = await worker_holding_one_delivery(app, redis)
    await channel.close()
    await eventually(lambda: _gone(redis, "w1"), what="w1 to be declared dead")

    stub = open_stub(app)
    call = stub.HeartbeatStream()
    await call.write(beat())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "register again" in caught.value.details()

    await stub.RegisterWorker(registration("w1"))
    call = stub.HeartbeatStream()
    await call.write(beat())
    assert await call.read() == coordinator_pb2.HeartbeatResponse()
    listed = (await stub.ListWorkers(coordinator_pb2.ListWorkersRequest())).workers
    assert [w.worker_id for w in listed] == ["w1"]
    call.cancel()


async def test_a_goodbye_ends_the_stream_without_declaring_the_worker_dead(
    start_coordinator: StartCoordinator, redis: aioredis.Redis
) -> None:
    app = await start_coordinator(**LONG_LEASE)
    channel, call = await worker_holding_one_delivery(app, redis)
    with capture_logs() as logs:
        await call.write(beat(leaving=True))
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
        await channel.close()
        await app.liveness.check_once()

    await assert_still_holding(redis, "w1")
    assert [e["event"] for e in logs if e["event"].startswith("worker declared dead")] == []


async def test_a_coordinator_stopping_ends_the_streams_without_declaring_anybody_dead(
    start_coordinator: StartCoordinator, redis: aioredis.Redis
) -> None:
    app = await start_coordinator(**LONG_LEASE)
    channel, call = await worker_holding_one_delivery(app, redis)
    try:
        await app.stop()
        assert await call.code() != grpc.StatusCode.OK  # the worker opens a new one elsewhere
    finally:
        await channel.close()

    await assert_still_holding(redis, "w1")


async def test_a_stream_carries_the_auth_token_and_one_worker_only(
    start_coordinator: StartCoordinator, redis: aioredis.Redis
) -> None:
    app = await start_coordinator(auth_token="s3cret", **LONG_LEASE)
    channel = open_channel(f"127.0.0.1:{app.port}", auth_token="s3cret")
    try:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        await stub.RegisterWorker(registration("w1"))
        call = stub.HeartbeatStream()
        await call.write(beat())
        assert await call.read() == coordinator_pb2.HeartbeatResponse()
        await call.write(beat("w2"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
    finally:
        await channel.close()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "open one stream per worker" in caught.value.details()


async def assert_still_holding(redis: aioredis.Redis, worker_id: str) -> None:
    """The worker was declared dead by nobody: registered, its delivery pending, nothing lost."""
    assert await registered(redis, worker_id)
    assert await read_outcomes(redis) == []
    assert (await redis.xpending(STREAM, keys.WORKER_GROUP))["pending"] == 1


async def _gone(redis: aioredis.Redis, worker_id: str) -> bool:
    return not await registered(redis, worker_id)
