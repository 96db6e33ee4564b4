"""The retry timer: delayed deliveries wait in ``gf:retry`` (a sorted set scored by due time) and
are appended to their queue streams when due, each to the lane its member names.

This is a timer, not a polling loop for work: after moving what is due it sleeps until the next
due time (an asyncio timer: precise to the millisecond), capped at ``retry_timer_max_sleep_ms``.
Deliveries are scheduled by graflow_runtime.dispatch in any process (the scheduler's retries, this
coordinator's ``Dispatch``), which appends to ``gf:retry:wake`` whenever a delivery is due before
everything ``gf:retry`` held. A listener (:class:`RetryWakeListener`, on a Redis connection of its
own) follows that stream (``XREAD BLOCK``) and wakes the timer at once, so it sleeps until the new
due time instead. Redis's own ``BLOCK`` timeout is not used as the timer: Redis checks blocked
clients' timeouts about every 100 ms (``hz`` 10), so deliveries would be up to ~100 ms late.
The listener reads the stream's tail when it starts and then wakes the timer once, so a delivery
scheduled before it listened is found by that move. The cap bounds how late a delivery can be
when a wake-up was lost (a Redis failover, the listener reconnecting). A delivery is therefore
appended a round trip after its due time (plus the clock difference between the host that
scheduled it and this one), whoever scheduled it. Moving is one Lua script (take due members,
XADD each, ZREM it), so any number of coordinator replicas can run the timer and each delivery is
appended exactly once.

Each cell of the key layout (docs/architecture.md, "Redis Cluster: cells") has its own timer
(``retry_timer(cell)``, whose members go to that cell's lanes: the move script stays in one slot)
and wake-up stream (``retry_wake(cell)``): the coordinator runs one timer and one listener per
cell, each listener on a connection of its own.
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


# Longest blocking read of the wake-up listener (it reads again at once; any length works).
WAKE_BLOCK_MS = 10_000
_MOVE_DUE = LuaScript.load(__package__, "move_due.lua")


class RetryTimer(BackgroundLoop):
    name = "retry-timer"

    def __init__(
        self,
        redis: aioredis.Redis,
        groups: QueueGroups,
        *,
        max_sleep_ms: int,
        batch: int = 500,
        cell: int = 0,
    ) -> None:
        super().__init__()
        self.cell = cell
        # The timer's key; the key prefixes of the cell's normal and high lanes (a member's head
        # names its queue and lane: keys.retry_head).
        self._key = keys.retry_timer(cell)
        high, normal = keys.queue_lane_prefixes(cell)
        self._lane_prefixes = (normal, high)
        self._groups = groups
        self._max_sleep_s = max_sleep_ms / 1000
        self._batch = batch
        self._redis = redis

    async def move_due(self) -> tuple[int, int | None]:
        """Append every due delivery to its queue. Returns (moved, next due ms or None)."""
        total = 0
        while True:
            now_ms = int(time.time() * 1000)
            reply = await _MOVE_DUE.run(
                self._redis, [self._key], [now_ms, self._batch, *self._lane_prefixes]
            )
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
        """Move what is due; sleep until the next due time (cut short by the listener's wake-up)."""
        _, next_due = await self.move_due()
        if next_due is None:
            return self._max_sleep_s
        return min(max(next_due - time.time() * 1000, 0) / 1000, self._max_sleep_s)


class RetryWakeListener(BackgroundLoop):
    """Wakes ``timer`` for every entry of its cell's ``gf:retry:wake`` (a delivery due earlier than
    it knew). Its blocking reads hold ``redis``: give it a client of its own."""

    name = "retry-timer-wake"

    def __init__(
        self, redis: aioredis.Redis, timer: RetryTimer, *, block_ms: int = WAKE_BLOCK_MS
    ) -> None:
        super().__init__()
        self._redis = redis
        self._timer = timer
        self._stream = keys.retry_wake(timer.cell)
        self._block_ms = block_ms
        self._last: bytes | None = None

    async def step(self) -> float:
        # All of it may be cut short by a stop: it only reads, and a start reads the tail again (a
        # stop arriving while the tail was read had to wait for the blocking read after it).
        with self.interruptible():
            if self._last is None:
                self._last = await tail_id(self._redis, self._stream)
                self._timer.wake()  # what was scheduled before this read is found by the next move
            if self._stopping.is_set():
                # Stopped during the first read, whose cancellation redis-py can lose (seen with
                # 8.2 on a new connection): the blocking read would hold the stop for its length.
                return 0.0
            reply = await self._redis.xread({self._stream: self._last}, block=self._block_ms)
        for _stream, entries in reply or ():
            self._last = entries[-1][0]
            self._timer.wake()
        return 0.0
