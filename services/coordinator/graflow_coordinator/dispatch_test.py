from __future__ import annotations

import grpc
import pytest
import redis.asyncio as aioredis

from graflow_api.v1 import coordinator_pb2, coordinator_pb2_grpc
from graflow_runtime import keys
from graflow_runtime.dispatch import CHUNK, Dispatcher
from graflow_runtime.queues import QueueGroups

from graflow_coordinator.conftest import delivery, envelope, stream_envelopes


async def test_dispatch_appends_the_envelope_to_its_queue_stream(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    reply = await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("a"), delivery("b")]))

    assert (reply.accepted, reply.duplicates) == (2, 0)
    appended = await stream_envelopes(redis)
    assert [(e.run_id, e.node_id, e.attempt) for e in appended] == [("run-1", "a", 1), ("run-1", "b", 1)]
    assert all(e.enqueued_at_ms > 0 for e in appended)
    assert await redis.hget(keys.dispatch_record("run-1"), "a") == b"1"
    assert await redis.ttl(keys.dispatch_record("run-1")) > 0


async def test_a_delivery_of_an_ended_run_is_not_enqueued(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    await redis.hset(keys.run_meta("run-1"), keys.RUN_ENDED_AT_FIELD, "1700000000000")
    await redis.hset(keys.run_meta("run-2"), keys.RUN_ENDED_AT_FIELD, "0")  # live: 'ended' is 0

    reply = await stub.Dispatch(coordinator_pb2.DispatchRequest(
        deliveries=[delivery("a"), delivery("b", run_id="run-2")]))

    assert (reply.accepted, reply.duplicates) == (1, 0)
    assert [(e.run_id, e.node_id) for e in await stream_envelopes(redis)] == [("run-2", "b")]
    assert await redis.hget(keys.dispatch_record("run-1"), "a") is None


async def test_an_enqueued_entry_carries_the_last_end_it_was_live_after(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("a")]))
    last_end = await redis.xadd(keys.RUNS_ENDED, {keys.RUN_ENDED_RUN_FIELD: b"other-run"})
    await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("b")]))

    entries = await redis.xrange(keys.queue_stream("default"))
    assert [fields[keys.ENDED_CURSOR_FIELD] for _id, fields in entries] == [b"0-0", last_end]


async def test_dispatch_is_idempotent_per_run_node_and_attempt(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    first = await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("a")]))
    again = await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("a")]))

    assert (first.accepted, first.duplicates) == (1, 0)
    assert (again.accepted, again.duplicates) == (0, 1)
    assert await redis.xlen(keys.queue_stream("default")) == 1


async def test_a_repeated_delivery_within_one_batch_is_a_duplicate(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    reply = await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("a"), delivery("a")]))

    assert (reply.accepted, reply.duplicates) == (1, 1)
    assert await redis.xlen(keys.queue_stream("default")) == 1


async def test_one_batch_records_the_attempts_of_several_runs_each_with_its_expiry(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("a")]))
    reply = await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[
        delivery("a"), delivery("b"), delivery("a", run_id="run-2"), delivery("a", attempt=2),
        delivery("b", run_id="run-2", attempt=3), delivery("b", run_id="run-2", attempt=2)]))

    assert (reply.accepted, reply.duplicates) == (4, 2)
    assert await redis.hgetall(keys.dispatch_record("run-1")) == {b"a": b"2", b"b": b"1"}
    assert await redis.hgetall(keys.dispatch_record("run-2")) == {b"a": b"1", b"b": b"3"}
    assert await redis.ttl(keys.dispatch_record("run-1")) > 0
    assert await redis.ttl(keys.dispatch_record("run-2")) > 0


async def test_a_higher_attempt_is_accepted_and_a_lower_one_is_a_duplicate(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("a", attempt=1)]))
    retry = await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("a", attempt=2)]))
    stale = await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("a", attempt=1)]))

    assert (retry.accepted, retry.duplicates) == (1, 0)
    assert (stale.accepted, stale.duplicates) == (0, 1)
    assert [e.attempt for e in await stream_envelopes(redis)] == [1, 2]


@pytest.mark.parametrize(
    ("bad", "mentions"),
    [
        (coordinator_pb2.Delivery(envelope=envelope(run_id="")), "run_id"),
        (coordinator_pb2.Delivery(envelope=envelope(node_id="")), "node_id"),
        (coordinator_pb2.Delivery(envelope=envelope(task_type="")), "task_type"),
        (coordinator_pb2.Delivery(envelope=envelope(queue="")), "queue"),
        (coordinator_pb2.Delivery(envelope=envelope(attempt=0)), "attempt"),
        (coordinator_pb2.Delivery(envelope=envelope(queue="two words")), "whitespace"),
        (coordinator_pb2.Delivery(envelope=envelope(queue="line\nbreak")), "newline"),
        (coordinator_pb2.Delivery(), "envelope is missing"),
    ],
)
async def test_an_invalid_delivery_rejects_the_whole_batch_and_appends_nothing(
    stub: coordinator_pb2_grpc.CoordinatorStub,
    redis: aioredis.Redis,
    bad: coordinator_pb2.Delivery,
    mentions: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("ok"), bad]))

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "deliveries[1]" in caught.value.details()
    assert mentions in caught.value.details()
    assert await redis.xlen(keys.queue_stream("default")) == 0
    assert not await redis.exists(keys.dispatch_record("run-1"))


async def test_priority_above_zero_goes_to_the_high_lane_highest_first_and_the_rest_to_the_normal_lane(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    batch = [
        delivery("low", priority=0),
        delivery("high", priority=9),
        delivery("negative", priority=-3),
        delivery("mid", priority=5),
        delivery("low2", priority=0),
    ]

    await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=batch))

    assert [e.node_id for e in await stream_envelopes(redis, high=True)] == ["high", "mid"]
    assert [e.node_id for e in await stream_envelopes(redis)] == ["low", "low2", "negative"]


async def test_a_delivery_replacing_a_lost_attempt_goes_to_the_high_lane(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    batch = [delivery("queued"), delivery("lost", attempt=2, lost_attempts=1, replaces_lost_attempt=True)]

    reply = await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=batch))

    assert reply.accepted == 2
    assert [(e.node_id, e.attempt) for e in await stream_envelopes(redis, high=True)] == [("lost", 2)]
    assert [e.node_id for e in await stream_envelopes(redis)] == ["queued"]
    # The high lane's entry carries the ended-runs cursor like any other (invariant 11).
    [(_id, fields)] = await redis.xrange(keys.queue_high_stream("default"))
    assert fields[keys.ENDED_CURSOR_FIELD] == b"0-0"


async def test_a_delayed_high_lane_delivery_waits_on_the_retry_timer_naming_its_lane(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    batch = [delivery("urgent", priority=1, delay_ms=60_000), delivery("plain", delay_ms=60_000)]

    await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=batch))

    heads = sorted(m.split(b"\n", 1)[0] for m in await redis.zrange(keys.RETRY_TIMER, 0, -1))
    assert heads == [b"default", b"default high"]
    assert await redis.xlen(keys.queue_high_stream("default")) == 0


async def test_the_consumer_group_exists_before_the_first_append(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("a", queue="fresh")]))

    for stream in keys.queue_lanes("fresh"):
        groups = await redis.xinfo_groups(stream)
        assert [g["name"] for g in groups] == [keys.WORKER_GROUP.encode()]
    # A group created after the append (at "$") would not hand this entry out.
    read = await redis.xreadgroup(keys.WORKER_GROUP, "w1", {keys.queue_stream("fresh"): ">"}, count=10)
    assert len(read[0][1]) == 1


async def test_dispatch_recreates_the_group_when_the_queue_stream_was_deleted(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("a")]))
    await redis.delete(keys.queue_stream("default"))

    reply = await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("b")]))

    assert reply.accepted == 1
    read = await redis.xreadgroup(keys.WORKER_GROUP, "w1", {keys.queue_stream("default"): ">"}, count=10)
    assert len(read[0][1]) == 1


async def test_dispatch_recreates_the_group_when_the_high_lane_was_deleted(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("a", priority=1)]))
    await redis.delete(keys.queue_high_stream("default"))

    reply = await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("b", priority=1)]))

    assert reply.accepted == 1
    read = await redis.xreadgroup(
        keys.WORKER_GROUP, "w1", {keys.queue_high_stream("default"): ">"}, count=10
    )
    assert len(read[0][1]) == 1


async def test_a_batch_larger_than_one_script_call_is_dispatched_whole_and_idempotently(
    redis: aioredis.Redis,
) -> None:
    dispatcher = Dispatcher(redis, QueueGroups(redis), record_ttl_s=60)
    batch = [delivery(f"n{i}") for i in range(CHUNK * 2 + 7)]

    first = await dispatcher.dispatch(batch)
    await redis.script_flush()  # the pipelined path must survive NOSCRIPT too
    again = await dispatcher.dispatch(batch)

    assert (first.accepted, first.duplicates) == (len(batch), 0)
    assert (again.accepted, again.duplicates) == (0, len(batch))
    assert await redis.xlen(keys.queue_stream("default")) == len(batch)
