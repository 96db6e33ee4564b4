"""The retry timer: delayed deliveries wait in ``gf:retry`` (a sorted set scored by due time) and
are appended to their queue streams when due.

This is a timer, not a polling loop for work: after moving what is due it waits until the next
due time, blocked on ``gf:retry:wake`` (``XREAD BLOCK``), so that it wakes at once when a
delivery due earlier is scheduled. Deliveries are scheduled by graflow_runtime.dispatch in any
process (the scheduler's retries, this coordinator's ``Dispatch``), which appends to that stream
whenever a delivery is due before everything ``gf:retry`` held. The wait is capped at
``retry_timer_max_sleep_ms`` all the same (a wake-up lost with a Redis failover, a stream deleted
by hand). The timer starts reading the wake-up stream from its tail before its first move, so a
wake-up appended while it moves is not missed either. A delivery is therefore appended to its queue
one round trip after its due time (plus the clock difference between the host that scheduled it
and this one), whoever scheduled it. Moving is one Lua script (take due members, XADD each, ZREM
it), so any number of coordinator replicas can run the timer and each delivery is appended
exactly once.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis
import structlog

from graflow_runtime import keys
from graflow_runtime.loops import BackgroundLoop
from graflow_runtime.queues import QueueGroups
from graflow_runtime.scripts import LuaScript
from graflow_runtime.streams import tail_id

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
        # Last entry of gf:retry:wake this timer has seen (read from the tail at its first step).
        self._woken_at: bytes | None = None

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
        """Move what is due, then wait until the next due time or a wake-up, whichever is first."""
        if self._woken_at is None:
            self._woken_at = await tail_id(self._redis, keys.RETRY_WAKE)
        _, next_due = await self.move_due()
        wait_ms = self._max_sleep_s * 1000
        if next_due is not None:
            wait_ms = min(next_due - time.time() * 1000, wait_ms)
        if wait_ms >= 1:
            with self.interruptible():
                woken = await self._redis.xread({keys.RETRY_WAKE: self._woken_at}, block=int(wait_ms))
            for _stream, entries in woken or ():
                self._woken_at = entries[-1][0]
        return 0.0
