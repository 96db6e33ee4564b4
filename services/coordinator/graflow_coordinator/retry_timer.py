"""The retry timer: delayed deliveries wait in ``gf:retry`` (a sorted set scored by due time) and
are appended to their queue streams when due.

This is a timer, not a polling loop for work: after moving what is due it sleeps until the next
due time (capped at ``retry_timer_max_sleep_ms`` so deliveries scheduled by other replicas are
not missed for long), and Dispatch in this process wakes it early. Moving is one Lua script
(take due members, XADD each, ZREM it), so any number of coordinator replicas can run the timer
and each delivery is appended exactly once.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis
import structlog

from graflow_runtime import keys
from graflow_runtime.loops import BackgroundLoop
from graflow_runtime.queues import QueueGroups
from graflow_runtime.scripts import LuaScript

log = structlog.get_logger(__name__)


QUEUE_PREFIX = keys.queue_stream("")
_MOVE_DUE = LuaScript.load(__package__, "move_due.lua")


class RetryTimer(BackgroundLoop):
    name = "retry-timer"

    def __init__(
        self, redis: aioredis.Redis, groups: QueueGroups, *, max_sleep_ms: int, batch: int = 500
    ) -> None:
        super().__init__()
        self._groups = groups
        self._max_sleep_s = max_sleep_ms / 1000
        self._batch = batch
        self._redis = redis

    async def move_due(self) -> tuple[int, int | None]:
        """Append every due delivery to its queue. Returns (moved, next due ms or None)."""
        total = 0
        while True:
            now_ms = int(time.time() * 1000)
            reply = await _MOVE_DUE.run(self._redis, [keys.RETRY_TIMER], [now_ms, self._batch, QUEUE_PREFIX])
            moved, malformed, next_due = int(reply[0]), int(reply[1]), int(reply[2])
            missing = {q.decode() if isinstance(q, bytes) else q for q in reply[3:]}
            total += moved
            if malformed:
                log.error("dropped malformed retry timer entries (no '<queue>\\n' prefix)", count=malformed)
            for queue in missing:
                log.warning("queue stream vanished; recreating its consumer group", queue=queue)
                self._groups.forget(queue)
                await self._groups.ensure([queue])
            if moved + malformed + len(missing) < self._batch and not missing:
                if total:
                    log.debug("retry timer released deliveries", count=total)
                return total, (next_due if next_due >= 0 else None)

    async def step(self) -> float:
        _, next_due = await self.move_due()
        if next_due is None:
            return self._max_sleep_s
        return min(max(next_due - time.time() * 1000, 0) / 1000, self._max_sleep_s)
