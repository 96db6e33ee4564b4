"""The coordinator's fleet-wide gauges: the queues (summed over both lanes of every cell) and the
worker registry, measured by the replica holding the lease (graflow_runtime.fleet)."""

from __future__ import annotations

import time
from collections import defaultdict

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


async def measure(redis: aioredis.Redis, lease_timeout_ms: int, taken: bool = False) -> Measurement:
    """The gauges now (``taken``: unused, they hold no state)."""
    now_ms = int(time.time() * 1000)
    queues = sorted(q.decode() if isinstance(q, bytes) else q for q in await redis.smembers(keys.QUEUES))
    length: dict[tuple[str, ...], float] = defaultdict(float)
    lag: dict[tuple[str, ...], float] = defaultdict(float)
    pending: dict[tuple[str, ...], float] = defaultdict(float)
    oldest: dict[tuple[str, ...], float] = {}
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
        label = (queue,)
        oldest.setdefault(label, 0.0)
        length[label] += size if isinstance(size, int) else 0
        if isinstance(groups, ResponseError) or isinstance(size, ResponseError):
            continue  # the lane's stream does not exist (yet)
        for group in groups:
            if group["name"] not in (keys.WORKER_GROUP, keys.WORKER_GROUP.encode()):
                continue
            lag[label] += group.get("lag") or 0
            pending[label] += group["pending"]
            if group["pending"]:
                summaries.xpending(lane, keys.WORKER_GROUP)
                waiting.append(queue)
    for queue, summary in zip(waiting, await summaries.execute(), strict=True):
        if summary["pending"]:
            age_s = max(0, now_ms - stream_id(summary["min"])[0]) / 1000
            oldest[(queue,)] = max(oldest[(queue,)], age_s)
    workers = await redis.zrangebyscore(keys.workers_index(), "-inf", "+inf", start=0, num=1, withscores=True)
    live = await redis.zcount(keys.workers_index(), now_ms - lease_timeout_ms, "+inf")
    return {
        "graflow_queue_length": length,
        "graflow_queue_lag": {label: lag[label] for label in length},
        "graflow_queue_pending": {label: pending[label] for label in length},
        "graflow_queue_oldest_pending_age_seconds": oldest,
        "graflow_workers_live": {(): float(live)},
        "graflow_workers_oldest_heartbeat_age_seconds": {
            (): max(0, now_ms - workers[0][1]) / 1000 if workers else 0.0
        },
    }
