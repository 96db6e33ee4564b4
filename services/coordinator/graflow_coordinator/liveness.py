"""Liveness: declare workers dead when their lease expires and reclaim what they held.

Every ``liveness_check_ms`` the loop looks for workers silent for longer than ``lease_timeout_ms``.
Each one is marked dead (its heartbeats now answer NOT_FOUND, so it stops taking work), the
attempts pending on each of its queues are reported lost to the scheduler or dead-lettered
(:mod:`reclaim`), its consumers are deleted where nothing is pending any more, and it leaves the
registry. Every step is idempotent and conditional, so several replicas may do this at once and a
coordinator that dies half-way is finished by the next pass of any replica (the worker stays
expired and marked until removed).

Less often (``queue_trim_interval_ms``) the loop also settles entries stranded under the
``coordinator-reclaimer`` consumer by a coordinator that died between claiming and settling;
reclaims entries held longer than the lease by consumers that are not registered workers (a worker
paused past its lease can still have a blocking read served after it was reaped, and a worker cut
off from the network can lose the reply of one); and trims queue streams below their oldest
pending entry.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ResponseError
from structlog.contextvars import bound_contextvars

from graflow_runtime import keys
from graflow_runtime.loops import BackgroundLoop
from graflow_runtime.queues import QueueGroups

from graflow_coordinator.queues import trim_queue
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
        startup_grace_ms: int = 0,
        maintenance_interval_ms: int,
        queues: Iterable[str],
    ) -> None:
        super().__init__()
        self._redis = redis
        self._registry = registry
        self._reclaimer = reclaimer
        self._groups = groups
        self._lease_timeout_ms = lease_timeout_ms
        # Nobody is declared dead before this: a worker can't have heartbeated to a coordinator
        # that wasn't running (settings.startup_grace_ms).
        self._reap_after_ms = int(time.time() * 1000) + startup_grace_ms
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
        if now_ms < self._reap_after_ms:
            return []
        removed = []
        for worker_id, last_heartbeat_ms in await self._registry.expired(cutoff_ms):
            silent_ms = now_ms - last_heartbeat_ms
            with bound_contextvars(worker_id=worker_id):
                why = (
                    f"was declared dead: no heartbeat for {silent_ms / 1000:.1f} s "
                    f"(lease {self._lease_timeout_ms / 1000:g} s)"
                )
                log_fields = {"silent_ms": silent_ms, "lease_timeout_ms": self._lease_timeout_ms}
                if await self.reap(worker_id, cutoff_ms, why=why, cause="no heartbeat within its lease",
                                   **log_fields):
                    removed.append(worker_id)
        return removed

    async def reap(
        self, worker_id: str, cutoff_ms: int, *, why: str, cause: str, **log_fields: object
    ) -> bool:
        """Declare ``worker_id`` dead unless it heartbeated after ``cutoff_ms``, report each attempt it
        held lost (``why`` completes "worker <id> ..." in their WorkerLost outcomes) and remove it.
        False when it is alive, or still holds what could not be reclaimed (the next pass finishes)."""
        worker_queues = await self._registry.mark_dead(worker_id, cutoff_ms)
        if worker_queues is None:
            return False  # it heartbeated in the meantime
        log.warning("worker declared dead; reclaiming its deliveries", cause=cause, **log_fields)
        queues = list(dict.fromkeys([*worker_queues, *self._queues]))
        stats = ReclaimStats()
        for queue in queues:
            stats.add(await self._reclaimer.reclaim_consumer(queue, worker_id, why=why))
        removed = await self._registry.remove(worker_id, queues, only_if_dead=True)
        log.info("dead worker's deliveries reclaimed", removed=removed, **stats.log_fields())
        return removed

    async def maintain_queues(self) -> None:
        for queue in sorted({*self._queues, *self._groups.known}):
            stats = await self._reclaimer.reclaim_consumer(
                queue,
                RECLAIMER,
                why="held it for a worker declared dead (the coordinator reclaiming it died)",
                min_idle_ms=self._lease_timeout_ms,
            )
            if stats.total:
                log.warning(
                    "settled deliveries stranded by a coordinator that died while reclaiming",
                    queue=queue,
                    **stats.log_fields(),
                )
            await self.reclaim_orphans(queue)
            trimmed = await trim_queue(self._redis, queue)
            if trimmed:
                log.debug("queue stream trimmed below its oldest pending entry", queue=queue, removed=trimmed)

    async def reclaim_orphans(self, queue: str) -> ReclaimStats:
        """Entries pending longer than the lease under consumers that are not registered workers are
        reported lost; such consumers are deleted once nothing is pending and they are idle."""
        stats = ReclaimStats()
        for name, (idle_ms, pending) in (await self._consumers(queue)).items():
            if name == RECLAIMER or idle_ms < self._lease_timeout_ms:
                continue
            if await self._registry.is_registered(name):
                continue
            if pending:
                found = await self._reclaimer.reclaim_consumer(
                    queue,
                    name,
                    why=(
                        f"held it for over {self._lease_timeout_ms / 1000:g} s without being a "
                        "registered worker (its lease had expired)"
                    ),
                    min_idle_ms=self._lease_timeout_ms,
                )
                if found.total:
                    log.warning(
                        "reclaimed deliveries held by a consumer that is not a registered worker",
                        queue=queue,
                        worker_id=name,
                        **found.log_fields(),
                    )
                stats.add(found)
            await self._registry.delete_orphan_consumer(queue, name)
        return stats

    async def _consumers(self, queue: str) -> dict[str, tuple[int, int]]:
        """Consumer name -> (idle ms, the least over both lanes of every cell; entries pending in
        all of them)."""
        found: dict[str, tuple[int, int]] = {}
        for stream in (lane for cell in keys.cells() for lane in keys.queue_lanes(queue, cell)):
            try:
                rows = await self._redis.xinfo_consumers(stream, keys.WORKER_GROUP)
            except ResponseError:  # no stream or no group
                continue
            for row in rows:
                name, idle_ms, pending = _text(row["name"]), int(row.get("idle", 0)), int(row["pending"])
                if name in found:
                    idle_ms, pending = min(idle_ms, found[name][0]), pending + found[name][1]
                found[name] = (idle_ms, pending)
        return found


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
