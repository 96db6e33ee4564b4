"""Canceled runs, from the scheduler to every worker.

The scheduler reports a run it canceled (``NotifyCanceled``); the coordinator records it in
``gf:canceled`` (zset run id -> ms) and lists the runs canceled within the last ``window_ms`` in
every heartbeat response (``canceled_run_ids``). A worker sees each cancellation in several
heartbeats (it deduplicates), so one lost response loses nothing, and the list stays short: entries
older than the window are removed when new ones are added. A worker registered after the window
does not learn it; a delivery of such a run still runs, and its outcome is ignored by the scheduler.

Heartbeats come often from every worker: the list is read from Redis at most once per
``cache_ms`` per process.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis.asyncio as aioredis
import structlog

from graflow_runtime import keys

from graflow_coordinator.errors import InvalidRequest

log = structlog.get_logger(__name__)

MAX_RUN_IDS = 1000
RUN_ID_MAX = 128


class CanceledRuns:
    def __init__(self, redis: aioredis.Redis, *, window_ms: int, cache_ms: int = 100) -> None:
        self._redis = redis
        self.window_ms = window_ms
        self._cache_ms = cache_ms
        self._cached: list[str] = []
        self._cached_at = -1.0

    async def add(self, run_ids: Sequence[str]) -> None:
        if len(run_ids) > MAX_RUN_IDS:
            raise InvalidRequest(f"{len(run_ids)} run ids in one call; send at most {MAX_RUN_IDS} per call")
        bad = [r for r in run_ids if not r or len(r) > RUN_ID_MAX or any(ch.isspace() for ch in r)]
        if bad:
            raise InvalidRequest(f"run id {bad[0][:64]!r} is not a run id")
        if not run_ids:
            return
        now_ms = int(time.time() * 1000)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(keys.CANCELED_RUNS, dict.fromkeys(run_ids, now_ms))
            pipe.zremrangebyscore(keys.CANCELED_RUNS, "-inf", now_ms - self.window_ms)
            await pipe.execute()
        self._cached_at = -1.0
        log.info("canceled runs recorded for the workers", run_ids=list(run_ids))

    async def recent(self) -> list[str]:
        """Runs canceled within the window."""
        now = time.monotonic()
        if self._cached_at >= 0 and (now - self._cached_at) * 1000 < self._cache_ms:
            return self._cached
        since = int(time.time() * 1000) - self.window_ms
        members = await self._redis.zrangebyscore(keys.CANCELED_RUNS, since, "+inf")
        self._cached = [m.decode() if isinstance(m, bytes) else m for m in members]
        self._cached_at = now
        return self._cached
