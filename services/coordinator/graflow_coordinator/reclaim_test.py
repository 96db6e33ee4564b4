"""Reclaiming: a dead worker's attempt is acknowledged and reported lost (never re-added), once."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from structlog.testing import capture_logs

from graflow_api.v1 import messages_pb2
from graflow_runtime import keys
from graflow_runtime.dispatch import Dispatcher
from graflow_runtime.queues import QueueGroups

from graflow_coordinator.conftest import delivery, read_outcomes
from graflow_coordinator.reclaim import Reclaimer

STREAM = keys.queue_stream("default")


async def pending_for(redis: aioredis.Redis, consumer: str) -> list[dict]:
    return await redis.xpending_range(STREAM, keys.WORKER_GROUP, "-", "+", 1000, consumername=consumer)


async def take(redis: aioredis.Redis, consumer: str, count: int) -> list[tuple[bytes, dict]]:
    reply = await redis.xreadgroup(keys.WORKER_GROUP, consumer, {STREAM: ">"}, count=count)
    return reply[0][1] if reply else []


async def dispatch(redis: aioredis.Redis, count: int, **fields: object) -> None:
    await Dispatcher(redis, QueueGroups(redis), record_ttl_s=60).dispatch(
        [delivery(f"n{i}", **fields) for i in range(count)]  # type: ignore[arg-type]
    )


async def test_a_dead_workers_attempt_is_acknowledged_and_reported_lost_instead_of_re_added(
    redis: aioredis.Redis,
) -> None:
    await dispatch(redis, 1, attempt=3, lost_attempts=1)
    await take(redis, "w1", 1)

    stats = await Reclaimer(redis, max_deliveries=5, dead_letter_maxlen=100).reclaim_consumer(
        "default", "w1", why="was declared dead: no heartbeat for 2.1 s (lease 1.5 s)"
    )

    assert (stats.lost, stats.poisoned, stats.undecodable) == (1, 0, 0)
    [outcome] = await read_outcomes(redis)
    assert (outcome.run_id, outcome.node_id, outcome.attempt) == ("run-1", "n0", 3)
    assert outcome.status == messages_pb2.TaskOutcome.STATUS_FAILED
    assert outcome.worker_lost and outcome.worker_id == "w1"
    assert (outcome.error.type, outcome.error.retryable) == ("WorkerLost", True)
    assert outcome.error.message == (
        "worker w1 was declared dead: no heartbeat for 2.1 s (lease 1.5 s); attempt 3 is lost"
    )
    assert await redis.xlen(STREAM) == 1  # nothing re-added: the scheduler dispatches attempt 4
    assert await pending_for(redis, "w1") == []
    assert await redis.xlen(keys.DEAD_LETTERS_STREAM) == 0


async def test_a_node_whose_worker_died_max_deliveries_times_is_dead_lettered_and_fails_as_poison(
    redis: aioredis.Redis,
) -> None:
    await dispatch(redis, 1, attempt=5, lost_attempts=4)
    [(entry_id, fields)] = await take(redis, "w1", 1)

    stats = await Reclaimer(redis, max_deliveries=5, dead_letter_maxlen=100).reclaim_consumer(
        "default", "w1", why="was declared dead"
    )

    assert (stats.lost, stats.poisoned) == (0, 1)
    [outcome] = await read_outcomes(redis)
    assert outcome.worker_lost and outcome.attempt == 5
    assert (outcome.error.type, outcome.error.retryable) == ("PoisonMessage", False)
    assert "the worker running it died 5 times" in outcome.error.message
    [(_, dead)] = await redis.xrange(keys.DEAD_LETTERS_STREAM)
    letter = messages_pb2.DeadLetter.FromString(dead[b"d"])
    assert letter.reason.startswith("poison message: the worker running it died 5 times (max_deliveries 5)")
    assert (letter.queue, letter.original_id, letter.raw) == ("default", entry_id.decode(), fields[b"e"])
    assert (letter.run_id, letter.node_id, letter.attempt) == ("run-1", "n0", 5)


async def test_deliveries_of_the_same_entry_count_towards_the_poison_threshold(
    redis: aioredis.Redis,
) -> None:
    await dispatch(redis, 1, lost_attempts=3)
    await take(redis, "w1", 1)
    await redis.xreadgroup(keys.WORKER_GROUP, "w1", {STREAM: "0"})  # a restart re-read it: 2 deliveries

    stats = await Reclaimer(redis, max_deliveries=5, dead_letter_maxlen=100).reclaim_consumer("default", "w1")

    assert stats.poisoned == 1
    [outcome] = await read_outcomes(redis)
    assert outcome.error.type == "PoisonMessage"


async def test_two_replicas_reclaiming_the_same_worker_report_each_attempt_once(
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
        batch_a = await first.claim("default", STREAM, "w1", pending)
        batch_b = await second.claim("default", STREAM, "w1", pending)
        a, b = await asyncio.gather(first.settle(batch_a), second.settle(batch_b))
    finally:
        await other.aclose()

    assert len(batch_a.entries) == len(batch_b.entries) == 300
    assert a.lost + b.lost == 300
    assert a.already_settled + b.already_settled == 300
    outcomes = await read_outcomes(redis)
    assert sorted(o.node_id for o in outcomes) == sorted(f"n{i}" for i in range(300))
    assert await take(redis, "w2", 1000) == []
    assert await pending_for(redis, "w1") == []


async def test_a_worker_committing_while_its_deliveries_are_reclaimed_gets_no_lost_report(
    redis: aioredis.Redis,
) -> None:
    await dispatch(redis, 2)
    [(committed_id, _), _] = await take(redis, "w1", 2)
    reclaimer = Reclaimer(redis, max_deliveries=5, dead_letter_maxlen=100)
    batch = await reclaimer.claim("default", STREAM, "w1", await pending_for(redis, "w1"))
    await redis.xack(STREAM, keys.WORKER_GROUP, committed_id)  # the "dead" worker's commit lands

    stats = await reclaimer.settle(batch)

    assert (stats.lost, stats.already_settled) == (1, 1)
    assert len(await read_outcomes(redis)) == 1  # only the attempt nobody committed


async def test_a_pending_entry_deleted_from_the_stream_raises_an_alarm_and_reports_nothing(
    redis: aioredis.Redis,
) -> None:
    await dispatch(redis, 2)
    [(gone_id, _), _] = await take(redis, "w1", 2)
    await redis.xdel(STREAM, gone_id)

    with capture_logs() as logs:
        stats = await Reclaimer(redis, max_deliveries=5, dead_letter_maxlen=100).reclaim_consumer(
            "default", "w1"
        )

    assert (stats.lost, stats.deleted) == (1, 1)
    alarms = [e for e in logs if e["log_level"] == "error" and e["event"].startswith("ALARM")]
    assert alarms and alarms[0]["entry_ids"] == [gone_id.decode()]
    assert len(await read_outcomes(redis)) == 1
    assert await pending_for(redis, "w1") == []


async def test_an_undecodable_envelope_of_a_dead_worker_goes_to_dead_letters(redis: aioredis.Redis) -> None:
    await QueueGroups(redis).ensure(["default"])
    await redis.xadd(STREAM, {keys.ENVELOPE_FIELD: b"\xff\xff\xff"})
    await take(redis, "w1", 1)

    stats = await Reclaimer(redis, max_deliveries=5, dead_letter_maxlen=100).reclaim_consumer("default", "w1")

    assert (stats.lost, stats.undecodable) == (0, 1)
    [(_, fields)] = await redis.xrange(keys.DEAD_LETTERS_STREAM)
    assert b"undecodable envelope" in fields[b"d"]
    assert await read_outcomes(redis) == []  # no node to report it for
    assert await take(redis, "w2", 10) == []


async def test_a_delivery_acknowledged_by_its_worker_is_left_alone(redis: aioredis.Redis) -> None:
    await dispatch(redis, 1)
    [(entry_id, _)] = await take(redis, "w1", 1)
    await redis.xack(STREAM, keys.WORKER_GROUP, entry_id)  # the worker committed its outcome

    stats = await Reclaimer(redis, max_deliveries=5, dead_letter_maxlen=100).reclaim_consumer("default", "w1")

    assert stats.total == 0
    assert await redis.xlen(STREAM) == 1
    assert await read_outcomes(redis) == []


async def test_reclaiming_a_queue_that_does_not_exist_does_nothing(redis: aioredis.Redis) -> None:
    stats = await Reclaimer(redis, max_deliveries=5, dead_letter_maxlen=100).reclaim_consumer("nowhere", "w1")

    assert stats.total == 0


HIGH = keys.queue_high_stream("default")


async def test_a_dead_workers_deliveries_in_both_lanes_are_reported_lost_and_poison_counted_in_the_high_lane(
    redis: aioredis.Redis,
) -> None:
    await dispatch(redis, 1)  # normal lane: n0
    await Dispatcher(redis, QueueGroups(redis), record_ttl_s=60).dispatch([
        delivery("lost", attempt=2, lost_attempts=1, replaces_lost_attempt=True),
        delivery("poison", attempt=5, lost_attempts=4, replaces_lost_attempt=True),
    ])
    high = await redis.xreadgroup(keys.WORKER_GROUP, "w1", {HIGH: ">", STREAM: ">"}, count=10)
    assert sorted(len(items) for _stream, items in high) == [1, 2]

    stats = await Reclaimer(redis, max_deliveries=5, dead_letter_maxlen=100).reclaim_consumer(
        "default", "w1", why="was declared dead"
    )

    assert (stats.lost, stats.poisoned) == (2, 1)
    outcomes = {o.node_id: o for o in await read_outcomes(redis)}
    assert sorted(outcomes) == ["lost", "n0", "poison"]
    assert outcomes["lost"].error.type == "WorkerLost" and outcomes["lost"].attempt == 2
    assert outcomes["poison"].error.type == "PoisonMessage"
    [(_, dead)] = await redis.xrange(keys.DEAD_LETTERS_STREAM)
    assert messages_pb2.DeadLetter.FromString(dead[b"d"]).node_id == "poison"
    for stream in (HIGH, STREAM):
        assert await redis.xpending_range(stream, keys.WORKER_GROUP, "-", "+", 10, consumername="w1") == []
