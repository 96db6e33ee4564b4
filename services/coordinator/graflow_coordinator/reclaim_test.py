from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from structlog.testing import capture_logs

from graflow_runtime import keys

from graflow_coordinator.conftest import delivery
from graflow_coordinator.dispatch import Dispatcher
from graflow_coordinator.queues import QueueGroups
from graflow_coordinator.reclaim import Reclaimer

STREAM = keys.queue_stream("default")


async def pending_for(redis: aioredis.Redis, consumer: str) -> list[dict]:
    return await redis.xpending_range(STREAM, keys.WORKER_GROUP, "-", "+", 1000, consumername=consumer)


async def take(redis: aioredis.Redis, consumer: str, count: int) -> list[tuple[bytes, dict]]:
    reply = await redis.xreadgroup(keys.WORKER_GROUP, consumer, {STREAM: ">"}, count=count)
    return reply[0][1] if reply else []


async def dispatch(redis: aioredis.Redis, count: int) -> None:
    await Dispatcher(redis, QueueGroups(redis), record_ttl_s=60).dispatch(
        [delivery(f"n{i}") for i in range(count)]
    )


async def test_two_replicas_reclaiming_the_same_worker_re_add_each_delivery_once(
    redis: aioredis.Redis, redis_url: str
) -> None:
    await dispatch(redis, 300)
    await take(redis, "w1", 300)
    other = aioredis.Redis.from_url(redis_url)
    try:
        first = Reclaimer(redis, max_deliveries=5, dead_letter_maxlen=100)
        second = Reclaimer(other, max_deliveries=5, dead_letter_maxlen=100)
        pending = await pending_for(redis, "w1")
        # Both claim before either settles: the worst interleaving.
        batch_a = await first.claim("default", "w1", pending)
        batch_b = await second.claim("default", "w1", pending)
        a, b = await asyncio.gather(first.settle(batch_a), second.settle(batch_b))
    finally:
        await other.aclose()

    assert len(batch_a.entries) == len(batch_b.entries) == 300
    assert a.requeued + b.requeued == 300
    assert a.already_settled + b.already_settled == 300
    assert len(await take(redis, "w2", 1000)) == 300
    assert await pending_for(redis, "w1") == []


async def test_a_worker_committing_while_its_deliveries_are_reclaimed_gets_no_second_copy(
    redis: aioredis.Redis,
) -> None:
    await dispatch(redis, 2)
    [(committed_id, _), _] = await take(redis, "w1", 2)
    reclaimer = Reclaimer(redis, max_deliveries=5, dead_letter_maxlen=100)
    batch = await reclaimer.claim("default", "w1", await pending_for(redis, "w1"))
    await redis.xack(STREAM, keys.WORKER_GROUP, committed_id)  # the "dead" worker's commit lands

    stats = await reclaimer.settle(batch)

    assert (stats.requeued, stats.already_settled) == (1, 1)
    assert len(await take(redis, "w2", 10)) == 1


async def test_a_pending_entry_deleted_from_the_stream_raises_an_alarm_and_is_not_re_added(
    redis: aioredis.Redis,
) -> None:
    await dispatch(redis, 2)
    [(gone_id, _), _] = await take(redis, "w1", 2)
    await redis.xdel(STREAM, gone_id)

    with capture_logs() as logs:
        stats = await Reclaimer(redis, max_deliveries=5, dead_letter_maxlen=100).reclaim_consumer(
            "default", "w1"
        )

    assert (stats.requeued, stats.deleted) == (1, 1)
    alarms = [e for e in logs if e["log_level"] == "error" and e["event"].startswith("ALARM")]
    assert alarms and alarms[0]["entry_ids"] == [gone_id.decode()]
    assert len(await take(redis, "w2", 10)) == 1
    assert await pending_for(redis, "w1") == []


async def test_an_undecodable_envelope_of_a_dead_worker_goes_to_dead_letters(redis: aioredis.Redis) -> None:
    await QueueGroups(redis).ensure(["default"])
    await redis.xadd(STREAM, {keys.ENVELOPE_FIELD: b"\xff\xff\xff"})
    await take(redis, "w1", 1)

    stats = await Reclaimer(redis, max_deliveries=5, dead_letter_maxlen=100).reclaim_consumer("default", "w1")

    assert (stats.requeued, stats.dead_lettered) == (0, 1)
    [(_, fields)] = await redis.xrange(keys.DEAD_LETTERS_STREAM)
    assert b"undecodable envelope" in fields[b"d"]
    assert await take(redis, "w2", 10) == []


async def test_a_delivery_acknowledged_by_its_worker_is_left_alone(redis: aioredis.Redis) -> None:
    await dispatch(redis, 1)
    [(entry_id, _)] = await take(redis, "w1", 1)
    await redis.xack(STREAM, keys.WORKER_GROUP, entry_id)  # the worker committed its outcome

    stats = await Reclaimer(redis, max_deliveries=5, dead_letter_maxlen=100).reclaim_consumer("default", "w1")

    assert stats.total == 0
    assert await redis.xlen(STREAM) == 1


async def test_reclaiming_a_queue_that_does_not_exist_does_nothing(redis: aioredis.Redis) -> None:
    stats = await Reclaimer(redis, max_deliveries=5, dead_letter_maxlen=100).reclaim_consumer("nowhere", "w1")

    assert stats.total == 0
