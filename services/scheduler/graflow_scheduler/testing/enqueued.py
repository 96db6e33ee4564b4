"""What the scheduler's dispatches wrote to Redis, read back by tests: the envelopes appended to the
queue streams (both lanes, every cell), and those waiting in the retry timers (no coordinator moves them in
these tests)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from graflow_api.v1 import messages_pb2
from graflow_runtime import keys
from graflow_runtime.streams import stream_id


@dataclass(frozen=True)
class Queued:
    envelope: messages_pb2.TaskEnvelope
    # 0: appended to its queue at once; else the ms the retry timer releases it.
    due_ms: int
    # In the queue's high lane (or bound for it through the retry timer).
    high: bool = False


@dataclass(frozen=True)
class Enqueued:
    """Every delivery enqueued so far: queue entries in the order they were appended, then the retry
    timer's by due time. Dispatch records each attempt once, so a repeated dispatch adds nothing."""

    deliveries: list[Queued]

    def envelopes(self, run_id: str, node_id: str) -> list[Queued]:
        """The deliveries of one node, by attempt."""
        found = [q for q in self.deliveries if (q.envelope.run_id, q.envelope.node_id) == (run_id, node_id)]
        return sorted(found, key=lambda q: q.envelope.attempt)

    def delivered(self, run_id: str) -> list[tuple[str, int]]:
        """(node, attempt) of every delivery of the run."""
        return [
            (q.envelope.node_id, q.envelope.attempt) for q in self.deliveries if q.envelope.run_id == run_id
        ]


async def enqueued(redis: aioredis.Redis) -> Enqueued:
    appended: list[tuple[tuple[int, int], Queued]] = []
    delayed = []
    for cell in keys.cells():
        lanes = ((True, keys.queue_high_stream("*", cell)), (False, keys.queue_stream("*", cell)))
        for high, pattern in lanes:
            async for stream in redis.scan_iter(match=pattern):
                for entry_id, fields in await redis.xrange(stream):
                    envelope = messages_pb2.TaskEnvelope.FromString(fields[keys.ENVELOPE_FIELD])
                    appended.append((stream_id(entry_id), Queued(envelope, 0, high)))
        for member, score in await redis.zrange(keys.retry_timer(cell), 0, -1, withscores=True):
            head, envelope = member.split(b"\n", 1)
            high = keys.HIGH_LANE.encode() in head.split()[1:]  # "<queue>[ high][ sig=...]"
            delayed.append(Queued(messages_pb2.TaskEnvelope.FromString(envelope), int(score), high))
    appended.sort(key=lambda item: item[0])
    delayed.sort(key=lambda queued: queued.due_ms)
    return Enqueued([queued for _, queued in appended] + delayed)


async def wait_enqueued(
    redis: aioredis.Redis, predicate: Callable[[Enqueued], object], *, timeout_s: float = 10.0
) -> Enqueued:
    """Poll what was enqueued until ``predicate`` holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await enqueued(redis)
        if predicate(found):
            return found
        if time.monotonic() > deadline:
            enqueued_ids = [(q.envelope.run_id, q.envelope.node_id, q.envelope.attempt)
                            for q in found.deliveries]
            raise AssertionError(f"timed out after {timeout_s}s; enqueued: {enqueued_ids}")
        await asyncio.sleep(0.02)
