"""graflow_runtime.dispatch against a real Redis: the mechanism the scheduler runs for its own
deliveries and the coordinator's Dispatch RPC runs for others (their own tests cover the callers)."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from graflow_api.v1 import coordinator_pb2, messages_pb2
from graflow_runtime import keys
from graflow_runtime.dispatch import CHUNK, Dispatcher, InvalidDelivery
from graflow_runtime.queues import QueueGroups, QueueLimitReached
from graflow_runtime.runids import new_run_id
from graflow_runtime.testing.slots import four_cells, one_slot_scripts  # noqa: F401 - fixtures


def delivery(node_id: str, *, run_id: str = "run-1", attempt: int = 1, delay_ms: int = 0,
             queue: str = "default", priority: int = 0) -> coordinator_pb2.Delivery:
    envelope = messages_pb2.TaskEnvelope(
        run_id=run_id, node_id=node_id, task_type="t", attempt=attempt, queue=queue, priority=priority
    )
    return coordinator_pb2.Delivery(envelope=envelope, delay_ms=delay_ms)


@pytest.fixture
def dispatcher(redis: aioredis.Redis) -> Dispatcher:
    return Dispatcher(redis, QueueGroups(redis), record_ttl_s=60)


async def queued(redis: aioredis.Redis, queue: str = "default") -> list[tuple[str, int]]:
    entries = await redis.xrange(keys.queue_stream(queue))
    envelopes = [messages_pb2.TaskEnvelope.FromString(f[keys.ENVELOPE_FIELD]) for _, f in entries]
    return [(e.node_id, e.attempt) for e in envelopes]


async def test_a_batch_is_enqueued_once_per_attempt_highest_priority_first(
    dispatcher: Dispatcher, redis: aioredis.Redis
) -> None:
    # Priorities <= 0 all go to the normal lane (above 0: the high lane, the coordinator's tests).
    batch = [
        delivery("low", priority=-5), delivery("high"), delivery("low", priority=-5),
        delivery("next", attempt=2, priority=-5),
    ]

    first = await dispatcher.dispatch(batch)
    again = await dispatcher.dispatch(batch)

    assert (first.accepted, first.duplicates) == (3, 1)
    assert (again.accepted, again.duplicates) == (0, 4)
    assert await queued(redis) == [("high", 1), ("low", 1), ("next", 2)]
    assert await redis.hgetall(keys.dispatch_record("run-1")) == {b"high": b"1", b"low": b"1", b"next": b"2"}
    groups = await redis.xinfo_groups(keys.queue_stream("default"))
    assert [g["name"] for g in groups] == [keys.WORKER_GROUP.encode()]


async def test_an_invalid_delivery_rejects_the_batch_and_writes_nothing(
    dispatcher: Dispatcher, redis: aioredis.Redis
) -> None:
    with pytest.raises(InvalidDelivery, match=r"deliveries\[1\].*attempt"):
        await dispatcher.dispatch([delivery("ok"), delivery("bad", attempt=0)])

    assert await redis.keys("gf:*") == []


async def test_a_large_batch_is_dispatched_whole_across_script_calls(
    dispatcher: Dispatcher, redis: aioredis.Redis
) -> None:
    batch = [delivery(f"n{i}") for i in range(CHUNK + 3)]

    result = await dispatcher.dispatch(batch)

    assert (result.accepted, result.duplicates) == (len(batch), 0)
    assert await redis.xlen(keys.queue_stream("default")) == len(batch)


async def test_a_delayed_delivery_waits_on_the_retry_timer_due_after_its_delay(
    dispatcher: Dispatcher, redis: aioredis.Redis
) -> None:
    before_ms = int(time.time() * 1000)
    await dispatcher.dispatch([delivery("a", attempt=2, delay_ms=5000)])
    after_ms = int(time.time() * 1000)

    ((member, due),) = await redis.zrange(keys.RETRY_TIMER, 0, -1, withscores=True)
    assert before_ms + 5000 <= due <= after_ms + 5000
    queue, _, raw = member.partition(b"\n")
    assert queue == b"default" and messages_pb2.TaskEnvelope.FromString(raw).enqueued_at_ms == int(due)
    assert await redis.xlen(keys.queue_stream("default")) == 0


async def test_the_retry_timer_is_woken_only_by_a_delivery_due_before_all_it_holds(
    dispatcher: Dispatcher, redis: aioredis.Redis
) -> None:
    await dispatcher.dispatch([delivery("a", delay_ms=5000)])
    first = await redis.xrange(keys.RETRY_WAKE)
    await dispatcher.dispatch([delivery("b", delay_ms=9000)])  # due later: no wake-up
    later = await redis.xrange(keys.RETRY_WAKE)
    await dispatcher.dispatch([delivery("c", delay_ms=1000), delivery("d", delay_ms=2000)])
    earlier = await redis.xrange(keys.RETRY_WAKE)

    assert len(first) == 1 and later == first
    ((entry_id, fields),) = earlier  # one entry kept, the newest
    assert entry_id > first[0][0]
    ((_, c_due),) = await redis.zrange(keys.RETRY_TIMER, 0, 0, withscores=True)
    assert int(fields[b"due"]) == int(c_due)  # the new earliest due time


async def test_the_consumer_group_is_recreated_when_a_queue_stream_vanished(
    dispatcher: Dispatcher, redis: aioredis.Redis
) -> None:
    await dispatcher.dispatch([delivery("a")])
    await redis.delete(keys.queue_stream("default"))

    result = await dispatcher.dispatch([delivery("b")])

    assert result.accepted == 1
    read = await redis.xreadgroup(keys.WORKER_GROUP, "w1", {keys.queue_stream("default"): ">"}, count=10)
    assert [e for _, entries in read for e in entries] != []


async def test_queue_names_are_capped_and_a_refused_queue_holds_back_only_its_deliveries(
    redis: aioredis.Redis,
) -> None:
    dispatcher = Dispatcher(redis, QueueGroups(redis, max_queues=2), record_ttl_s=60)
    await dispatcher.dispatch([delivery("a"), delivery("b", queue="second")])
    batch = [delivery("c"), delivery("d", queue="third"), delivery("e", queue="second")]
    result = await dispatcher.dispatch(batch)
    assert result.accepted == 2
    assert await queued(redis) == [("a", 1), ("c", 1)]
    assert await queued(redis, "second") == [("b", 1), ("e", 1)]
    assert not await redis.exists(keys.queue_stream("third"), keys.queue_high_stream("third"))
    assert {q.decode() for q in await redis.smembers(keys.QUEUES)} == {"default", "second"}
    with pytest.raises(QueueLimitReached, match=r"'third'.*MAX_QUEUES is 2"):
        await QueueGroups(redis, max_queues=2).ensure(["default", "third"])


async def test_a_batch_spanning_cells_is_one_script_call_per_cell_each_in_its_cells_keys(
    four_cells: keys.Layout, one_slot_scripts: list[str], redis: aioredis.Redis  # noqa: F811 - fixtures
) -> None:
    dispatcher = Dispatcher(redis, QueueGroups(redis), record_ttl_s=60)
    run_ids = [new_run_id(cell=cell) for cell in (0, 1, 2, 3, 1)]
    batch = [delivery("a", run_id=run_id) for run_id in run_ids]
    batch += [
        delivery("b", run_id=run_ids[2], attempt=2, delay_ms=60_000),
        delivery("c", run_id=run_ids[3], priority=1),
    ]

    result = await dispatcher.dispatch(batch)
    again = await dispatcher.dispatch(batch)

    assert (result.accepted, again.duplicates) == (len(batch), len(batch))
    assert one_slot_scripts.count("dispatch.lua") == 8  # one call per cell, twice (each call checked)
    for cell in range(4):
        entries = await redis.xrange(keys.queue_stream("default", cell))
        runs = [messages_pb2.TaskEnvelope.FromString(f[keys.ENVELOPE_FIELD]).run_id for _, f in entries]
        assert runs == [r for r in run_ids if keys.cell_of(r) == cell]
        groups = await redis.xinfo_groups(keys.queue_high_stream("default", cell))
        assert [g["name"] for g in groups] == [keys.WORKER_GROUP.encode()]
    high = await redis.xrange(keys.queue_high_stream("default", 3))
    assert [messages_pb2.TaskEnvelope.FromString(f[keys.ENVELOPE_FIELD]).node_id for _, f in high] == ["c"]
    assert [await redis.zcard(keys.retry_timer(cell)) for cell in range(4)] == [0, 0, 1, 0]
    assert await redis.xlen(keys.retry_wake(2)) == 1
    # Nothing in the default layout's (untagged) keys.
    assert await redis.exists(keys.RETRY_TIMER, keys.RETRY_WAKE, "gf:q:default", "gf:qh:default") == 0
