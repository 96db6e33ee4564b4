from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from graflow_runtime import keys
from graflow_runtime.queues import QueueGroups

from graflow_coordinator.queues import trim_queue

STREAM = keys.queue_stream("default")


async def test_a_group_created_on_an_existing_stream_starts_at_its_end(redis: aioredis.Redis) -> None:
    await redis.xadd(STREAM, {keys.ENVELOPE_FIELD: b"before"})

    await QueueGroups(redis).ensure(["default"])
    await redis.xadd(STREAM, {keys.ENVELOPE_FIELD: b"after"})

    [[_, entries]] = await redis.xreadgroup(keys.WORKER_GROUP, "w1", {STREAM: ">"}, count=10)
    assert [fields[keys.ENVELOPE_FIELD] for _, fields in entries] == [b"after"]


async def test_ensuring_an_existing_group_is_harmless(redis: aioredis.Redis) -> None:
    await QueueGroups(redis).ensure(["default"])
    await QueueGroups(redis).ensure(["default"])

    for stream in keys.queue_lanes("default"):
        assert len(await redis.xinfo_groups(stream)) == 1


@pytest.mark.parametrize("stream", keys.queue_lanes("default"), ids=["high lane", "normal lane"])
async def test_trimming_keeps_every_pending_and_undelivered_entry(redis: aioredis.Redis, stream: str) -> None:
    await QueueGroups(redis).ensure(["default"])
    for i in range(500):
        await redis.xadd(stream, {keys.ENVELOPE_FIELD: str(i).encode()})
    [[_, delivered]] = await redis.xreadgroup(keys.WORKER_GROUP, "w1", {stream: ">"}, count=400)
    await redis.xack(stream, keys.WORKER_GROUP, *[entry_id for entry_id, _ in delivered[:300]])
    await redis.xack(stream, keys.WORKER_GROUP, *[entry_id for entry_id, _ in delivered[350:]])

    removed = await trim_queue(redis, "default")

    assert removed > 0
    remaining = [int(fields[keys.ENVELOPE_FIELD]) for _, fields in await redis.xrange(stream)]
    assert remaining[0] <= 300  # the oldest pending entry (#300) is kept
    assert set(range(300, 500)) <= set(remaining)  # pending (300-349) and everything after it


async def test_trimming_removes_more_than_one_xtrim_limit_of_acknowledged_entries(
    redis: aioredis.Redis,
) -> None:
    await QueueGroups(redis).ensure(["default"])
    for start in range(0, 25_000, 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(start, start + 1000):
                pipe.xadd(STREAM, {keys.ENVELOPE_FIELD: b"%d" % i})
            await pipe.execute()
    # Everything delivered and acknowledged: the group needs nothing below its last-delivered id.
    last = (await redis.xinfo_stream(STREAM))["last-generated-id"]
    await redis.xgroup_setid(STREAM, keys.WORKER_GROUP, last)

    removed = await trim_queue(redis, "default")

    assert removed > 20_000  # more than one call's limit (10,000)
    assert await redis.xlen(STREAM) < 200  # at most the macro node holding the last entry
    await redis.delete(STREAM)


async def test_trimming_a_queue_without_a_stream_does_nothing(redis: aioredis.Redis) -> None:
    assert await trim_queue(redis, "nowhere") == 0
