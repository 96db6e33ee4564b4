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

from graflow_coordinator.queues import QueueGroups

log = structlog.get_logger(__name__)

# KEYS[1] = retry zset. ARGV: now ms, max members, queue stream key prefix.
# Streams are derived from the members (single-Redis deployment; see docs/architecture.md).
# Returns {moved, malformed, next due ms or -1, queue whose stream is missing...}. Members of a
# queue whose stream is missing stay put (the caller recreates the consumer group first).
_MOVE_DUE_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local moved, malformed = 0, 0
local missing = {}
for _, member in ipairs(due) do
  local nl = string.find(member, '\\n', 1, true)
  if not nl then
    redis.call('ZREM', KEYS[1], member)
    malformed = malformed + 1
  else
    local queue = string.sub(member, 1, nl - 1)
    local stream = ARGV[3] .. queue
    if redis.call('EXISTS', stream) == 1 then
      redis.call('XADD', stream, '*', 'e', string.sub(member, nl + 1))
      redis.call('ZREM', KEYS[1], member)
      moved = moved + 1
    else
      missing[#missing + 1] = queue
    end
  end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_due = -1
if #first > 0 then next_due = math.floor(tonumber(first[2])) end
local reply = {moved, malformed, next_due}
for _, queue in ipairs(missing) do reply[#reply + 1] = queue end
return reply
"""

QUEUE_PREFIX = keys.queue_stream("")


class RetryTimer(BackgroundLoop):
    name = "retry-timer"

    def __init__(
        self, redis: aioredis.Redis, groups: QueueGroups, *, max_sleep_ms: int, batch: int = 500
    ) -> None:
        super().__init__()
        self._groups = groups
        self._max_sleep_s = max_sleep_ms / 1000
        self._batch = batch
        self._script = redis.register_script(_MOVE_DUE_LUA)

    async def move_due(self) -> tuple[int, int | None]:
        """Append every due delivery to its queue. Returns (moved, next due ms or None)."""
        total = 0
        while True:
            now_ms = int(time.time() * 1000)
            reply = await self._script(keys=[keys.RETRY_TIMER], args=[now_ms, self._batch, QUEUE_PREFIX])
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
