"""Queue streams: trimming, both lanes in every cell. Their layout and consumer group:
graflow_runtime.queues."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from graflow_runtime import keys
from graflow_runtime.streams import stream_id, trim_below


async def trim_queue(redis: aioredis.Redis, queue: str) -> int:
    """Trim both lanes of ``queue`` in every cell below the oldest entry any group still needs
    (MINID ~), each by its own groups. Returns the entries removed."""
    removed = 0
    for stream in (lane for cell in keys.cells() for lane in keys.queue_lanes(queue, cell)):
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
