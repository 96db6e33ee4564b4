"""The coordinator's fleet-wide gauges: the queues (summed over both lanes of every cell) and the
worker registry, measured by the replica holding the lease (graflow_runtime.fleet)."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from graflow_runtime import keys
from graflow_runtime.fleet import FleetGauge, Measurement
from graflow_runtime.streams import stream_id

QUEUE = ("queue",)
GAUGES = (
    FleetGauge("graflow_queue_length", "Entries in the queue's streams (both lanes, every cell).", QUEUE),
    FleetGauge(
        "graflow_queue_lag",
        "Entries of the queue not yet delivered to any worker (the workers' consumer group lag).",
        QUEUE,
    ),
    FleetGauge("graflow_queue_pending", "Entries delivered to a worker and not yet acknowledged.", QUEUE),
    FleetGauge(
        "graflow_queue_oldest_pending_age_seconds",
        "Age of the queue's oldest delivered, unacknowledged entry (0 when none).",
        QUEUE,
    ),
    FleetGauge("graflow_workers_live", "Registered workers whose last heartbeat is within their lease."),
    FleetGauge(
        "graflow_workers_oldest_heartbeat_age_seconds",
        "Seconds since the least recent heartbeat of a registered worker (0 when none).",
    ),
)


@dataclass(frozen=True, slots=True)
class QueueStat:
    """One queue summed over both lanes of every cell (the ``graflow_queue_*`` gauges, ListQueues)."""

    length: int = 0
    lag: int = 0
    pending: int = 0
    oldest_pending_age_ms: int = 0


async def queue_stats(redis: aioredis.Redis, now_ms: int | None = None) -> dict[str, QueueStat]:
    """Every registered queue's statistics, in three round trips whatever the number of cells: the
    gauges and ListQueues read them through this one function, so they always agree."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    queues = sorted(q.decode() if isinstance(q, bytes) else q for q in await redis.smembers(keys.QUEUES))
    length: dict[str, int] = defaultdict(int)
    lag: dict[str, int] = defaultdict(int)
    pending: dict[str, int] = defaultdict(int)
    oldest: dict[str, int] = {}
    lanes = [
        (queue, lane) for queue in queues for cell in keys.cells() for lane in keys.queue_lanes(queue, cell)
    ]
    pipe = redis.pipeline(transaction=False)
    for _, lane in lanes:
        pipe.xlen(lane)
        pipe.xinfo_groups(lane)
    replies = await pipe.execute(raise_on_error=False)
    summaries = redis.pipeline(transaction=False)
    waiting: list[str] = []
    for index, (queue, lane) in enumerate(lanes):
        size, groups = replies[2 * index], replies[2 * index + 1]
        oldest.setdefault(queue, 0)
        length[queue] += size if isinstance(size, int) else 0
        if isinstance(groups, ResponseError) or isinstance(size, ResponseError):
            continue  # the lane's stream does not exist (yet)
        for group in groups:
            if group["name"] not in (keys.WORKER_GROUP, keys.WORKER_GROUP.encode()):
                continue
            lag[queue] += group.get("lag") or 0
            pending[queue] += group["pending"]
            if group["pending"]:
                summaries.xpending(lane, keys.WORKER_GROUP)
                waiting.append(queue)
    for queue, summary in zip(waiting, await summaries.execute(), strict=True):
        if summary["pending"]:
            oldest[queue] = max(oldest[queue], now_ms - stream_id(summary["min"])[0], 0)
    return {
        queue: QueueStat(length[queue], lag[queue], pending[queue], oldest[queue]) for queue in oldest
    }


async def measure(redis: aioredis.Redis, lease_timeout_ms: int, taken: bool = False) -> Measurement:
    """The gauges now (``taken``: unused, they hold no state)."""
    now_ms = int(time.time() * 1000)
    stats = {(queue,): stat for queue, stat in (await queue_stats(redis, now_ms)).items()}
    workers = await redis.zrangebyscore(keys.workers_index(), "-inf", "+inf", start=0, num=1, withscores=True)
    live = await redis.zcount(keys.workers_index(), now_ms - lease_timeout_ms, "+inf")
    return {
        "graflow_queue_length": {label: float(stat.length) for label, stat in stats.items()},
        "graflow_queue_lag": {label: float(stat.lag) for label, stat in stats.items()},
        "graflow_queue_pending": {label: float(stat.pending) for label, stat in stats.items()},
        "graflow_queue_oldest_pending_age_seconds": {
            label: stat.oldest_pending_age_ms / 1000 for label, stat in stats.items()
        },
        "graflow_workers_live": {(): float(live)},
        "graflow_workers_oldest_heartbeat_age_seconds": {
            (): max(0, now_ms - workers[0][1]) / 1000 if workers else 0.0
        },
    }
