from __future__ import annotations

import time

import redis.asyncio as aioredis

from graflow_api.v1 import coordinator_pb2, coordinator_pb2_grpc
from graflow_runtime import keys
from graflow_runtime.dispatch import Dispatcher
from graflow_runtime.queues import QueueGroups

from graflow_coordinator.conftest import StartCoordinator, delivery, eventually, stream_envelopes
from graflow_coordinator.retry_timer import RetryTimer


async def test_a_delayed_delivery_is_held_by_the_timer_and_appended_once_due(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    sent_ms = int(time.time() * 1000)
    reply = await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("a", delay_ms=1000)]))

    assert reply.accepted == 1
    assert await redis.zcard(keys.RETRY_TIMER) == 1
    assert await redis.xlen(keys.queue_stream("default")) == 0

    appended = await eventually(lambda: stream_envelopes(redis), what="the delayed delivery")
    seen_ms = int(time.time() * 1000)
    assert [(e.node_id, e.attempt) for e in appended] == [("a", 1)]
    assert appended[0].enqueued_at_ms >= sent_ms + 1000  # stamped with its due time
    assert seen_ms >= sent_ms + 1000  # not released before it was due
    assert await redis.zcard(keys.RETRY_TIMER) == 0


async def test_a_delayed_retry_is_deduplicated_like_any_delivery(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("a", attempt=2, delay_ms=50)]))
    again = await stub.Dispatch(
        coordinator_pb2.DispatchRequest(deliveries=[delivery("a", attempt=2, delay_ms=50)])
    )

    assert (again.accepted, again.duplicates) == (0, 1)
    await eventually(lambda: stream_envelopes(redis), what="the delayed delivery")
    assert await redis.xlen(keys.queue_stream("default")) == 1


async def test_two_coordinators_running_timers_append_each_due_delivery_exactly_once(
    start_coordinator: StartCoordinator, open_stub, redis: aioredis.Redis
) -> None:
    first = await start_coordinator()
    await start_coordinator()
    batch = [delivery(f"n{i}", delay_ms=200 + (i % 5) * 20) for i in range(300)]

    await open_stub(first).Dispatch(coordinator_pb2.DispatchRequest(deliveries=batch))

    async def all_released() -> bool:
        return await redis.zcard(keys.RETRY_TIMER) == 0

    await eventually(all_released, what="the retry timer to empty")
    appended = await stream_envelopes(redis)
    assert sorted(e.node_id for e in appended) == sorted(f"n{i}" for i in range(300))


async def test_a_due_high_lane_member_is_appended_to_the_high_lane(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    await stub.Dispatch(coordinator_pb2.DispatchRequest(
        deliveries=[delivery("urgent", priority=2, delay_ms=50), delivery("plain", delay_ms=50)]
    ))

    appended = await eventually(lambda: stream_envelopes(redis, high=True), what="the delayed delivery")
    assert [e.node_id for e in appended] == ["urgent"]
    assert [e.node_id for e in await eventually(lambda: stream_envelopes(redis))] == ["plain"]


async def test_a_due_high_lane_member_of_a_vanished_queue_gets_both_groups_first(
    redis: aioredis.Redis,
) -> None:
    timer = RetryTimer(redis, QueueGroups(redis), max_sleep_ms=50)
    member = b"gone high\n" + delivery("a", priority=1).envelope.SerializeToString()
    await redis.zadd(keys.RETRY_TIMER, {member: 1})

    moved, _ = await timer.move_due()

    assert moved == 1
    assert await redis.xlen(keys.queue_stream("gone")) == 0
    read = await redis.xreadgroup(keys.WORKER_GROUP, "w1", {keys.queue_high_stream("gone"): ">"}, count=10)
    assert len(read[0][1]) == 1


async def test_due_entries_for_a_vanished_queue_stream_get_a_group_before_being_appended(
    redis: aioredis.Redis,
) -> None:
    timer = RetryTimer(redis, QueueGroups(redis), max_sleep_ms=50)
    await redis.zadd(keys.RETRY_TIMER, {b"gone\n" + delivery("a").envelope.SerializeToString(): 1})

    moved, next_due = await timer.move_due()

    assert (moved, next_due) == (1, None)
    groups = await redis.xinfo_groups(keys.queue_stream("gone"))
    assert [g["name"] for g in groups] == [keys.WORKER_GROUP.encode()]
    read = await redis.xreadgroup(keys.WORKER_GROUP, "w1", {keys.queue_stream("gone"): ">"}, count=10)
    assert len(read[0][1]) == 1


async def test_the_timer_reports_the_next_due_time_and_leaves_future_entries(redis: aioredis.Redis) -> None:
    timer = RetryTimer(redis, QueueGroups(redis), max_sleep_ms=50)
    due_ms = int(time.time() * 1000) + 60_000
    await redis.zadd(keys.RETRY_TIMER, {b"default\nfuture": due_ms})

    moved, next_due = await timer.move_due()

    assert (moved, next_due) == (0, due_ms)
    assert await redis.zcard(keys.RETRY_TIMER) == 1


async def test_a_delivery_another_process_schedules_is_moved_when_due_not_at_the_timers_cap(
    start_coordinator: StartCoordinator, redis: aioredis.Redis
) -> None:
    # The cap (a minute) is far beyond the test's bound: only the wake-up through Redis moves it.
    await start_coordinator(retry_timer_max_sleep_ms=60_000)
    await eventually(
        lambda: _blocked_on_wake(redis), what="the timer to wait on gf:retry:wake"
    )
    other_process = Dispatcher(redis, QueueGroups(redis), record_ttl_s=60)  # e.g. the scheduler
    sent_ms = int(time.time() * 1000)
    await other_process.dispatch([delivery("a", attempt=2, delay_ms=300)])

    appended = await eventually(lambda: stream_envelopes(redis), what="the delayed delivery")
    assert [(e.node_id, e.attempt) for e in appended] == [("a", 2)]
    assert int(time.time() * 1000) >= sent_ms + 300  # not before it was due


async def _blocked_on_wake(redis: aioredis.Redis) -> bool:
    clients = await redis.client_list()
    return any(c.get("cmd") == "xread" and c.get("flags", "").find("b") >= 0 for c in clients)
