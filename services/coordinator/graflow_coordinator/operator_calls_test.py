"""DeleteDeadLetters and ListQueues (issue 11: the console's dead letters and queues pages)."""

from __future__ import annotations

import grpc
import pytest
import redis.asyncio as aioredis

from graflow_api.v1 import coordinator_pb2, coordinator_pb2_grpc
from graflow_runtime import keys
from graflow_runtime.limits import DEAD_LETTERS_PAGE_MAX

from graflow_coordinator.conftest import delivery
from graflow_coordinator.deadletters_test import dead_letter
from graflow_coordinator.workers_test import registration


async def test_deleting_dead_letters_removes_them_and_counts_the_ids_not_found(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    ids = [await dead_letter(redis, f"n{i}") for i in range(3)]

    request = coordinator_pb2.DeleteDeadLettersRequest(ids=[ids[0], ids[2], "1-1"])
    reply = await stub.DeleteDeadLetters(request)

    assert (reply.deleted, reply.not_found) == (2, 1)
    listed = (await stub.ListDeadLetters(coordinator_pb2.ListDeadLettersRequest())).dead_letters
    assert [letter.id for letter in listed] == [ids[1]]
    again = await stub.DeleteDeadLetters(coordinator_pb2.DeleteDeadLettersRequest(ids=[ids[0]]))
    assert (again.deleted, again.not_found) == (0, 1)


async def test_deleting_a_malformed_or_too_many_ids_is_invalid_argument_and_deletes_nothing(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    kept = await dead_letter(redis, "n0")

    with pytest.raises(grpc.aio.AioRpcError) as malformed:
        await stub.DeleteDeadLetters(coordinator_pb2.DeleteDeadLettersRequest(ids=[kept, "1-0\n"]))
    too_many = [f"{i + 1}-0" for i in range(DEAD_LETTERS_PAGE_MAX + 1)]
    with pytest.raises(grpc.aio.AioRpcError) as beyond:
        await stub.DeleteDeadLetters(coordinator_pb2.DeleteDeadLettersRequest(ids=too_many))

    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ids[1]" in (malformed.value.details() or "")
    assert beyond.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(DEAD_LETTERS_PAGE_MAX) in (beyond.value.details() or "")
    assert await redis.xlen(keys.DEAD_LETTERS_STREAM) == 1


async def test_queues_are_listed_with_depth_lag_pending_and_live_workers(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    await stub.RegisterWorker(registration("w1", queues=["default", "gpu"]))
    await stub.RegisterWorker(registration("w2", queues=["default"]))
    await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery(f"n{i}") for i in range(3)]))
    # One delivery read by a worker and not acknowledged: pending, no longer lag.
    await redis.xreadgroup(keys.WORKER_GROUP, "w1", {keys.queue_stream("default"): ">"}, count=1)

    queues = {q.queue: q for q in (await stub.ListQueues(coordinator_pb2.ListQueuesRequest())).queues}

    assert sorted(queues) == ["default", "gpu"]
    default = queues["default"]
    assert (default.length, default.lag, default.pending, default.workers) == (3, 2, 1, 2)
    assert default.oldest_pending_age_ms >= 0
    gpu = queues["gpu"]
    assert (gpu.length, gpu.lag, gpu.pending, gpu.oldest_pending_age_ms, gpu.workers) == (0, 0, 0, 0, 1)


async def test_a_queue_without_workers_is_listed_with_none(
    stub: coordinator_pb2_grpc.CoordinatorStub,
) -> None:
    await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("a", queue="batch")]))

    queues = (await stub.ListQueues(coordinator_pb2.ListQueuesRequest())).queues

    batch = next(q for q in queues if q.queue == "batch")
    assert (batch.length, batch.lag, batch.workers) == (1, 1, 0)
