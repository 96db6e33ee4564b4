from __future__ import annotations

import grpc
import pytest
import redis.asyncio as aioredis

from graflow_api.v1 import coordinator_pb2, coordinator_pb2_grpc
from graflow_runtime import keys
from graflow_runtime.limits import MAX_QUEUES, MAX_WORKER_TASK_TYPES

from graflow_coordinator.conftest import delivery, read_outcomes


def registration(worker_id: str = "w1", **fields: object) -> coordinator_pb2.RegisterWorkerRequest:
    values: dict[str, object] = {
        "worker_id": worker_id,
        "queues": ["default"],
        "task_types": ["fetch", "clean"],
        "concurrency": 4,
        "hostname": "host-a",
        "pid": 123,
        "health_address": "127.0.0.1:7000",
    }
    values.update(fields)
    return coordinator_pb2.RegisterWorkerRequest(**values)


async def test_register_returns_the_lease_settings_and_lists_the_worker(
    stub: coordinator_pb2_grpc.CoordinatorStub,
) -> None:
    reply = await stub.RegisterWorker(registration("w1"))

    assert (reply.heartbeat_interval_ms, reply.lease_timeout_ms) == (20_000, 40_000)
    listed = (await stub.ListWorkers(coordinator_pb2.ListWorkersRequest())).workers
    assert len(listed) == 1
    info = listed[0]
    assert (info.worker_id, list(info.queues), list(info.task_types)) == (
        "w1",
        ["default"],
        ["fetch", "clean"],
    )
    assert (info.concurrency, info.hostname, info.pid, info.health_address) == (
        4,
        "host-a",
        123,
        "127.0.0.1:7000",
    )
    assert info.registered_at_ms > 0 and info.last_heartbeat_ms >= info.registered_at_ms


async def test_register_creates_the_consumer_groups_of_the_workers_queues(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    await stub.RegisterWorker(registration("w1", queues=["gpu"]))

    groups = await redis.xinfo_groups(keys.queue_stream("gpu"))
    assert [g["name"] for g in groups] == [keys.WORKER_GROUP.encode()]


async def test_heartbeat_renews_the_lease_and_records_in_flight(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    await stub.RegisterWorker(registration("w1"))
    await redis.zadd(keys.WORKERS_INDEX, {"w1": 1})  # pretend its last heartbeat was long ago

    await stub.Heartbeat(coordinator_pb2.HeartbeatRequest(worker_id="w1", in_flight=3))

    assert await redis.zscore(keys.WORKERS_INDEX, "w1") > 1
    listed = (await stub.ListWorkers(coordinator_pb2.ListWorkersRequest())).workers
    assert [(w.worker_id, w.in_flight) for w in listed] == [("w1", 3)]


async def test_heartbeat_of_an_unknown_worker_is_not_found_and_says_to_register_again(
    stub: coordinator_pb2_grpc.CoordinatorStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Heartbeat(coordinator_pb2.HeartbeatRequest(worker_id="ghost"))

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "lease expired: worker ghost" in caught.value.details()
    assert "register again" in caught.value.details()


async def test_deregister_removes_the_worker_and_its_idle_consumer(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    await stub.RegisterWorker(registration("w1"))
    await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("a")]))
    high, stream = keys.queue_lanes("default")
    read = await redis.xreadgroup(keys.WORKER_GROUP, "w1", {high: ">", stream: ">"}, count=1)
    [[_, [(entry_id, _)]]] = read
    await redis.xack(stream, keys.WORKER_GROUP, entry_id)

    await stub.DeregisterWorker(coordinator_pb2.DeregisterWorkerRequest(worker_id="w1"))

    assert (await stub.ListWorkers(coordinator_pb2.ListWorkersRequest())).workers == []
    assert await redis.xinfo_consumers(stream, keys.WORKER_GROUP) == []
    assert await redis.xinfo_consumers(high, keys.WORKER_GROUP) == []
    assert not await redis.exists(keys.worker_info("w1"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Heartbeat(coordinator_pb2.HeartbeatRequest(worker_id="w1"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_deregister_reports_attempts_the_worker_still_held_as_lost(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    await stub.RegisterWorker(registration("w1"))
    await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("a")]))
    stream = keys.queue_stream("default")
    await redis.xreadgroup(keys.WORKER_GROUP, "w1", {stream: ">"}, count=1)

    await stub.DeregisterWorker(coordinator_pb2.DeregisterWorkerRequest(worker_id="w1"))

    [outcome] = await read_outcomes(redis)
    assert (outcome.node_id, outcome.error.type, outcome.worker_lost) == ("a", "WorkerLost", True)
    assert outcome.error.message == "worker w1 deregistered without finishing it; attempt 1 is lost"
    assert await redis.xreadgroup(keys.WORKER_GROUP, "w2", {stream: ">"}, count=10) == []
    assert b"w1" not in [c["name"] for c in await redis.xinfo_consumers(stream, keys.WORKER_GROUP)]


@pytest.mark.parametrize(
    ("request_", "mentions"),
    [
        (registration(""), "worker_id is empty"),
        (registration("has space"), "whitespace"),
        (registration("w1", queues=[]), "names no queues"),
        (registration("w1", queues=["bad queue"]), "whitespace"),
        (
            registration("w1", queues=[f"q{i}" for i in range(MAX_QUEUES + 1)]),
            f"limit MAX_QUEUES is {MAX_QUEUES:,}",
        ),
        (
            registration("w1", task_types=[f"t{i}" for i in range(MAX_WORKER_TASK_TYPES + 1)]),
            f"limit MAX_WORKER_TASK_TYPES is {MAX_WORKER_TASK_TYPES:,}",
        ),
        (registration("w1", task_types=["has space"]), "task_types[0]"),
        (registration("w1", hostname="h" * 257), "hostname is 257 characters; the limit is 256"),
        (registration("w1", health_address="a" * 257), "health_address is 257 characters"),
    ],
)
async def test_an_invalid_registration_is_rejected_and_stores_nothing(
    stub: coordinator_pb2_grpc.CoordinatorStub,
    redis: aioredis.Redis,
    request_: coordinator_pb2.RegisterWorkerRequest,
    mentions: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RegisterWorker(request_)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert mentions in caught.value.details()
    assert await redis.zcard(keys.WORKERS_INDEX) == 0


async def test_a_live_worker_id_cannot_be_taken_by_another_process(
    stub: coordinator_pb2_grpc.CoordinatorStub,
) -> None:
    await stub.RegisterWorker(registration("w1", hostname="host-a", pid=1))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RegisterWorker(registration("w1", hostname="host-b", pid=1))

    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "unique id" in caught.value.details()


async def test_registering_again_reclaims_what_the_previous_process_left_pending(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    await stub.RegisterWorker(registration("w1"))
    await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("a")]))
    stream = keys.queue_stream("default")
    await redis.xreadgroup(keys.WORKER_GROUP, "w1", {stream: ">"}, count=1)

    # The same host and pid (a restarted container) registers again before reading anything.
    await stub.RegisterWorker(registration("w1"))

    assert await redis.xpending_range(stream, keys.WORKER_GROUP, "-", "+", 10, consumername="w1") == []
    [outcome] = await read_outcomes(redis)
    assert (outcome.node_id, outcome.error.type) == ("a", "WorkerLost")
    assert "registered again" in outcome.error.message
    assert len((await stub.ListWorkers(coordinator_pb2.ListWorkersRequest())).workers) == 1
