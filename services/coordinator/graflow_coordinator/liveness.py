"""Liveness: declare workers dead when their lease expires and reclaim what they held.

Every ``liveness_check_ms`` the loop looks for workers silent for longer than ``lease_timeout_ms``.
Each one is marked dead (its heartbeats now answer NOT_FOUND, so it stops taking work), its pending
deliveries on each of its queues are re-added or dead-lettered (:mod:`reclaim`), its consumers are
deleted where nothing is pending any more, and it leaves the registry. Every step is idempotent
and conditional, so several replicas may do this at once and a coordinator that dies half-way is
finished by the next pass of any replica (the worker stays expired and marked until removed).

Less often (``queue_trim_interval_ms``) the loop also re-adds entries stranded under the
``coordinator-reclaimer`` consumer by a coordinator that died between claiming and settling, and
trims queue streams below their oldest pending entry.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import redis.asyncio as aioredis
import structlog
from structlog.contextvars import bound_contextvars

from graflow_coordinator.loops import BackgroundLoop
from graflow_coordinator.queues import QueueGroups, trim_queue
from graflow_coordinator.reclaim import RECLAIMER, Reclaimer, ReclaimStats
from graflow_coordinator.workers import WorkerRegistry

log = structlog.get_logger(__name__)


class LivenessLoop(BackgroundLoop):
    name = "liveness"

    def __init__(
        self,
        redis: aioredis.Redis,
        registry: WorkerRegistry,
        reclaimer: Reclaimer,
        groups: QueueGroups,
        *,
        lease_timeout_ms: int,
        check_interval_ms: int,
        maintenance_interval_ms: int,
        queues: Iterable[str],
    ) -> None:
        super().__init__()
        self._redis = redis
        self._registry = registry
        self._reclaimer = reclaimer
        self._groups = groups
        self._lease_timeout_ms = lease_timeout_ms
        self._check_interval_s = check_interval_ms / 1000
        self._maintenance_interval_s = maintenance_interval_ms / 1000
        self._queues = list(queues)
        self._last_maintenance = time.monotonic()

    async def step(self) -> float:
        await self.check_once()
        if time.monotonic() - self._last_maintenance >= self._maintenance_interval_s:
            await self.maintain_queues()
            self._last_maintenance = time.monotonic()
        return self._check_interval_s

    async def check_once(self) -> list[str]:
        """Reap every worker whose lease expired. Returns the ids of the workers removed."""
        now_ms = int(time.time() * 1000)
        cutoff_ms = now_ms - self._lease_timeout_ms
        removed = []
        for worker_id, last_heartbeat_ms in await self._registry.expired(cutoff_ms):
            with bound_contextvars(worker_id=worker_id):
                if await self._reap(worker_id, now_ms - last_heartbeat_ms, cutoff_ms):
                    removed.append(worker_id)
        return removed

    async def _reap(self, worker_id: str, silent_ms: int, cutoff_ms: int) -> bool:
        worker_queues = await self._registry.mark_dead(worker_id, cutoff_ms)
        if worker_queues is None:
            return False  # it heartbeated in the meantime
        log.warning(
            "worker declared dead: no heartbeat within its lease; reclaiming its deliveries",
            silent_ms=silent_ms,
            lease_timeout_ms=self._lease_timeout_ms,
        )
        queues = list(dict.fromkeys([*worker_queues, *self._queues]))
        stats = ReclaimStats()
        for queue in queues:
            stats.add(await self._reclaimer.reclaim_consumer(queue, worker_id))
        removed = await self._registry.remove(worker_id, queues, only_if_dead=True)
        log.info(
            "dead worker's deliveries reclaimed",
            requeued=stats.requeued,
            dead_lettered=stats.dead_lettered,
            already_settled=stats.already_settled,
            deleted=stats.deleted,
            removed=removed,
        )
        return removed

    async def maintain_queues(self) -> None:
        for queue in sorted({*self._queues, *self._groups.known}):
            stats = await self._reclaimer.reclaim_consumer(
                queue, RECLAIMER, min_idle_ms=self._lease_timeout_ms
            )
            if stats.total:
                log.warning(
                    "re-added deliveries stranded by a coordinator that died while reclaiming",
                    queue=queue,
                    requeued=stats.requeued,
                    dead_lettered=stats.dead_lettered,
                )
            trimmed = await trim_queue(self._redis, queue)
            if trimmed:
                log.debug("queue stream trimmed below its oldest pending entry", queue=queue, removed=trimmed)
