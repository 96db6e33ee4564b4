"""Liveness: silent workers are declared dead and their attempts reported lost to the scheduler."""

from __future__ import annotations

import grpc
import pytest
import redis.asyncio as aioredis

from graflow_api.v1 import coordinator_pb2, messages_pb2
from graflow_runtime import keys

from graflow_coordinator.conftest import StartCoordinator, delivery, eventually, read_outcomes
from graflow_coordinator.reclaim import RECLAIMER
from graflow_coordinator.workers_test import registration

STREAM = keys.queue_stream("default")
# A short lease so that a silent worker is declared dead quickly.
FAST_LEASE = {"heartbeat_interval_ms": 100, "lease_timeout_ms": 400, "liveness_check_ms": 50}
# The loop looks once at start-up and then sleeps: the test drives check_once itself.
IDLE_LOOP = {"liveness_check_ms": 600_000, "queue_trim_interval_ms": 600_000}


async def read_as(
    redis: aioredis.Redis, consumer: str, count: int = 100, *, stream: str = STREAM
) -> list[tuple[bytes, dict]]:
    reply = await redis.xreadgroup(keys.WORKER_GROUP, consumer, {stream: ">"}, count=count)
    return reply[0][1] if reply else []


async def consumers(redis: aioredis.Redis, stream: str = STREAM) -> list[bytes]:
    return [c["name"] for c in await redis.xinfo_consumers(stream, keys.WORKER_GROUP)]


async def test_a_silent_worker_is_declared_dead_and_each_of_its_attempts_is_reported_lost_once(
    start_coordinator: StartCoordinator, open_stub, redis: aioredis.Redis
) -> None:
    stub = open_stub(await start_coordinator(**FAST_LEASE))
    await stub.RegisterWorker(registration("w1"))
    await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery(f"n{i}") for i in range(3)]))
    taken = await read_as(redis, "w1")  # w1 takes all three, then dies without acknowledging

    async def w1_gone() -> bool:
        return b"w1" not in await consumers(redis) and not await redis.zscore(keys.WORKERS_INDEX, "w1")

    await eventually(w1_gone, what="w1 to be declared dead and its consumer deleted")
    assert len(taken) == 3
    assert (await stub.ListWorkers(coordinator_pb2.ListWorkersRequest())).workers == []
    outcomes = await read_outcomes(redis)
    assert sorted(o.node_id for o in outcomes) == ["n0", "n1", "n2"]
    assert all(o.worker_lost and o.error.type == "WorkerLost" and o.worker_id == "w1" for o in outcomes)
    assert "worker w1 was declared dead: no heartbeat for" in outcomes[0].error.message
    assert await read_as(redis, "w2") == []  # nothing re-added: the scheduler owns the next attempt
    assert (await redis.xpending(STREAM, keys.WORKER_GROUP))["pending"] == 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Heartbeat(coordinator_pb2.HeartbeatRequest(worker_id="w1"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_worker_within_its_lease_is_not_declared_dead(
    start_coordinator: StartCoordinator, open_stub, redis: aioredis.Redis
) -> None:
    app = await start_coordinator(**IDLE_LOOP)
    stub = open_stub(app)
    await stub.RegisterWorker(registration("w1"))
    await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("a")]))
    await read_as(redis, "w1")

    assert await app.liveness.check_once() == []

    assert await consumers(redis) == [b"w1"]
    assert (await redis.xpending(STREAM, keys.WORKER_GROUP))["pending"] == 1
    await stub.Heartbeat(coordinator_pb2.HeartbeatRequest(worker_id="w1", in_flight=1))


async def test_an_expired_lease_is_reclaimed_by_the_next_check(
    start_coordinator: StartCoordinator, open_stub, redis: aioredis.Redis
) -> None:
    app = await start_coordinator(**IDLE_LOOP)
    stub = open_stub(app)
    await stub.RegisterWorker(registration("w1"))
    await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("a")]))
    await read_as(redis, "w1")
    await redis.zadd(keys.WORKERS_INDEX, {"w1": 1})  # its last heartbeat was long ago

    assert await app.liveness.check_once() == ["w1"]

    assert b"w1" not in await consumers(redis)
    assert [o.node_id for o in await read_outcomes(redis)] == ["a"]


async def test_a_restarted_coordinator_gives_workers_a_start_up_grace_before_declaring_them_dead(
    start_coordinator: StartCoordinator, open_stub, redis: aioredis.Redis
) -> None:
    app = await start_coordinator(**IDLE_LOOP, startup_grace_ms=60_000)
    stub = open_stub(app)
    await stub.RegisterWorker(registration("w1"))
    await redis.zadd(keys.WORKERS_INDEX, {"w1": 1})  # silent since before this coordinator started

    assert await app.liveness.check_once() == []

    await stub.Heartbeat(coordinator_pb2.HeartbeatRequest(worker_id="w1"))  # NOT_FOUND if reaped
    assert await read_outcomes(redis) == []


async def test_a_delivery_handed_out_max_deliveries_times_goes_to_dead_letters_and_fails_its_node(
    start_coordinator: StartCoordinator, open_stub, redis: aioredis.Redis
) -> None:
    stub = open_stub(await start_coordinator(**FAST_LEASE, max_deliveries=2))
    await stub.RegisterWorker(registration("w1"))
    await stub.Dispatch(
        coordinator_pb2.DispatchRequest(deliveries=[delivery("boom", run_id="r9", attempt=3)])
    )
    [(entry_id, fields)] = await read_as(redis, "w1")
    await redis.xreadgroup(keys.WORKER_GROUP, "w1", {STREAM: "0"})  # handed out a second time

    async def dead_lettered() -> list:
        return (await stub.ListDeadLetters(coordinator_pb2.ListDeadLettersRequest())).dead_letters

    [letter] = await eventually(dead_lettered, what="the poison message in dead letters")
    assert letter.reason.startswith(
        "poison message: the worker running it died 2 times (max_deliveries 2); last: worker w1 was "
        "declared dead: no heartbeat for"
    )
    assert (letter.queue, letter.original_id, letter.raw) == ("default", entry_id.decode(), fields[b"e"])
    assert (letter.run_id, letter.node_id, letter.attempt) == ("r9", "boom", 3)
    assert letter.dead_at_ms > 0

    async def w1_removed() -> bool:
        return not await redis.zscore(keys.WORKERS_INDEX, "w1")

    await eventually(w1_removed, what="w1 to be removed from the registry")
    assert await redis.xlen(STREAM) == 1  # not re-added
    assert (await redis.xpending(STREAM, keys.WORKER_GROUP))["pending"] == 0
    [outcome] = await read_outcomes(redis)
    assert (outcome.node_id, outcome.attempt, outcome.error.type) == ("boom", 3, "PoisonMessage")
    assert not outcome.error.retryable


async def test_lost_attempts_carried_by_the_envelope_stop_a_poison_message_from_circulating(
    start_coordinator: StartCoordinator, open_stub, redis: aioredis.Redis
) -> None:
    app = await start_coordinator(**IDLE_LOOP, max_deliveries=2)
    stub = open_stub(app)
    for worker_id in ("w1", "w2"):
        await stub.RegisterWorker(registration(worker_id))
    await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("boom")]))

    await read_as(redis, "w1")
    await redis.zadd(keys.WORKERS_INDEX, {"w1": 1})
    await app.liveness.check_once()  # first death: reported lost
    [lost] = await read_outcomes(redis)
    assert (lost.attempt, lost.error.type) == (1, "WorkerLost")
    # What the scheduler does with it: attempt 2, one lost attempt counted.
    await stub.Dispatch(
        coordinator_pb2.DispatchRequest(deliveries=[delivery("boom", attempt=2, lost_attempts=1)])
    )
    await read_as(redis, "w2")
    await redis.zadd(keys.WORKERS_INDEX, {"w2": 1})
    await app.liveness.check_once()  # second death: poison

    [_, poison] = await read_outcomes(redis)
    assert (poison.attempt, poison.error.type, poison.error.retryable) == (2, "PoisonMessage", False)
    [letter] = (await stub.ListDeadLetters(coordinator_pb2.ListDeadLettersRequest())).dead_letters
    assert letter.reason.startswith("poison message: the worker running it died 2 times")
    assert messages_pb2.TaskEnvelope.FromString(letter.raw).node_id == "boom"
    assert await read_as(redis, "w3") == []


async def test_deliveries_stranded_under_the_reclaimer_by_a_dead_coordinator_are_reported_lost(
    start_coordinator: StartCoordinator, open_stub, redis: aioredis.Redis
) -> None:
    app = await start_coordinator(**IDLE_LOOP)
    await open_stub(app).Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("a")]))
    [(entry_id, _)] = await read_as(redis, RECLAIMER)
    # A coordinator claimed it long ago and died before settling it.
    await redis.xclaim(STREAM, keys.WORKER_GROUP, RECLAIMER, 0, [entry_id], idle=60_000)

    await app.liveness.maintain_queues()

    [outcome] = await read_outcomes(redis)
    assert (outcome.node_id, outcome.error.type) == ("a", "WorkerLost")
    assert await read_as(redis, "w2") == []
    assert await redis.xpending_range(STREAM, keys.WORKER_GROUP, "-", "+", 10, consumername=RECLAIMER) == []


async def test_a_delivery_held_past_the_lease_by_a_consumer_that_is_not_a_registered_worker_is_reported_lost(
    start_coordinator: StartCoordinator, open_stub, redis: aioredis.Redis
) -> None:
    # A worker paused past its lease was reaped, then its blocking read was served: the entry sits
    # under a consumer nobody watches any more.
    app = await start_coordinator(**{**IDLE_LOOP, "heartbeat_interval_ms": 100, "lease_timeout_ms": 300})
    stub = open_stub(app)
    await stub.RegisterWorker(registration("alive"))
    await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("a"), delivery("b")]))
    await read_as(redis, "ghost", count=1)
    await read_as(redis, "alive", count=1)

    async def reported() -> list:
        await stub.Heartbeat(coordinator_pb2.HeartbeatRequest(worker_id="alive", in_flight=1))
        await app.liveness.maintain_queues()
        return await read_outcomes(redis)

    [outcome] = await eventually(reported, what="the orphaned delivery to be reported lost")
    assert (outcome.node_id, outcome.worker_id, outcome.error.type) == ("a", "ghost", "WorkerLost")
    assert "without being a registered worker" in outcome.error.message
    names = await consumers(redis)
    assert b"ghost" not in names and b"alive" in names  # the orphan consumer is gone, the live one stays
    assert len(await redis.xpending_range(STREAM, keys.WORKER_GROUP, "-", "+", 10, consumername="alive")) == 1


async def test_a_high_lane_delivery_held_past_the_lease_by_an_unregistered_consumer_is_reported_lost(
    start_coordinator: StartCoordinator, open_stub, redis: aioredis.Redis
) -> None:
    app = await start_coordinator(**{**IDLE_LOOP, "heartbeat_interval_ms": 100, "lease_timeout_ms": 300})
    stub = open_stub(app)
    high = keys.queue_high_stream("default")
    await stub.Dispatch(coordinator_pb2.DispatchRequest(
        deliveries=[delivery("a", attempt=2, lost_attempts=1, replaces_lost_attempt=True)]
    ))
    await read_as(redis, "ghost", stream=high)
    await read_as(redis, "ghost")  # a worker's read creates its consumer in both lanes

    async def reported() -> list:
        await app.liveness.maintain_queues()
        return await read_outcomes(redis)

    [outcome] = await eventually(reported, what="the orphaned high-lane delivery to be reported lost")
    assert (outcome.node_id, outcome.attempt, outcome.worker_id) == ("a", 2, "ghost")
    assert outcome.error.type == "WorkerLost"
    assert b"ghost" not in await consumers(redis, high) and b"ghost" not in await consumers(redis)
