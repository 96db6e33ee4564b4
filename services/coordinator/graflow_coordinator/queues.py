"""Queue streams: names, the workers' consumer group, and trimming.

A queue ``q`` is two streams, its lanes, each read by the consumer group ``workers``: the high
lane ``gf:qh:q``, which workers read first, and the normal lane ``gf:q:q`` (``keys.queue_lanes``;
docs/architecture.md, "Priority lanes"). Entries carry the ``TaskEnvelope`` bytes in field ``e``.
An entry is appended once per attempt (by Dispatch, the retry timer or a replay) and never again:
the attempt of a dead worker is reported lost and the scheduler dispatches the next attempt as a
new entry.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ResponseError

from graflow_runtime import keys
from graflow_runtime.streams import stream_id, trim_below

log = structlog.get_logger(__name__)

class QueueGroups:
    """Creates the ``workers`` group of both lanes of each queue once per process, before any append.

    A new stream gets its group at id 0 (so nothing appended by anybody in between is skipped); an
    existing stream without the group gets it at ``$``. Scripts that append use NOMKSTREAM-style
    checks and call :meth:`forget` when a stream vanished (FLUSHDB, DEL), so it is created again.
    """

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._ready: set[str] = set()

    @property
    def known(self) -> frozenset[str]:
        return frozenset(self._ready)

    async def ensure(self, queues: Iterable[str]) -> None:
        for queue in queues:
            if queue not in self._ready:
                await self._create(queue)
                self._ready.add(queue)

    def forget(self, queue: str) -> None:
        self._ready.discard(queue)

    async def _create(self, queue: str) -> None:
        for stream in keys.queue_lanes(queue):
            start = "$" if await self._redis.exists(stream) else "0"
            try:
                await self._redis.xgroup_create(stream, keys.WORKER_GROUP, id=start, mkstream=True)
                log.info("queue consumer group created", queue=queue, stream=stream, start=start)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise


# Entries one XTRIM call may evict, and calls per trim pass (1,000,000 entries).
async def trim_queue(redis: aioredis.Redis, queue: str) -> int:
    """Trim both lanes of ``queue`` below the oldest entry any group still needs (MINID ~), each
    by its own groups. Returns the entries removed."""
    removed = 0
    for stream in keys.queue_lanes(queue):
        removed += await _trim_stream(redis, stream)
    return removed


async def _trim_stream(redis: aioredis.Redis, stream: str) -> int:
    """An entry is still needed while it is pending (delivered, not acknowledged) or not yet
    delivered (after the group's last-delivered id). New entries only ever appear above those ids,
    so the threshold computed here stays safe until the XTRIM runs."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:  # no such stream
        return 0
    if not groups:
        return 0
    floor: tuple[int, int] | None = None
    for group in groups:
        candidates = [stream_id(group["last-delivered-id"])]
        summary = await redis.xpending(stream, group["name"])
        if summary["pending"]:
            candidates.append(stream_id(summary["min"]))
        lowest = min(candidates)
        floor = lowest if floor is None else min(floor, lowest)
    if floor is None or floor == (0, 0):
        return 0
    return await trim_below(redis, stream, floor)
