"""Reclaiming the in-flight deliveries of a consumer that will never acknowledge them.

For one (queue, consumer): list its pending entries (XPENDING), claim them to the consumer
``coordinator-reclaimer`` (XCLAIM), then settle each batch in one Lua script: acknowledge the old
entry and, only if that acknowledgement removed it from the pending list, append it again
(same envelope bytes, field ``n`` = deliveries so far) or, once it was delivered
``max_deliveries`` times, append it to the dead letters instead. Making the append conditional on
the XACK (which a MULTI cannot do) means that replicas reclaiming the same worker at once, or a
worker that commits its outcome in the middle of the reclaim, never produce a second copy.

Deliveries are counted across re-adds: XPENDING's times-delivered of the current entry plus the
``n`` carried by it. Each re-add is a new stream entry, so times-delivered alone would never reach
the threshold and a message that crashes its worker would circulate for ever.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis.asyncio as aioredis
import structlog
from google.protobuf.message import DecodeError
from redis.exceptions import ResponseError

from graflow_api.v1 import messages_pb2
from graflow_runtime import keys

from graflow_coordinator.deadletters import make_dead_letter
from graflow_coordinator.queues import DELIVERIES_FIELD

log = structlog.get_logger(__name__)

RECLAIMER = "coordinator-reclaimer"
BATCH = 1000

# KEYS[1] = queue stream, KEYS[2] = dead-letter stream. ARGV[1] = group, ARGV[2] = dead-letter
# maxlen; then quadruples: old entry id, 'q' (re-add) or 'd' (dead-letter), bytes, deliveries.
# Returns {requeued, dead_lettered, already_acknowledged}.
_SETTLE_LUA = """
local requeued, dead, skipped = 0, 0, 0
for i = 3, #ARGV, 4 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    if ARGV[i + 1] == 'q' then
      redis.call('XADD', KEYS[1], '*', 'e', ARGV[i + 2], 'n', ARGV[i + 3])
      requeued = requeued + 1
    else
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'd', ARGV[i + 2])
      dead = dead + 1
    end
  else
    skipped = skipped + 1
  end
end
return {requeued, dead, skipped}
"""


@dataclass
class ReclaimStats:
    requeued: int = 0
    dead_lettered: int = 0
    # Acknowledged by somebody else between XCLAIM and the settle script (worker commit, replica).
    already_settled: int = 0
    # Pending entries whose stream entry was deleted: an alarm (nothing left to re-add).
    deleted: int = 0

    def add(self, other: ReclaimStats) -> None:
        self.requeued += other.requeued
        self.dead_lettered += other.dead_lettered
        self.already_settled += other.already_settled
        self.deleted += other.deleted

    @property
    def total(self) -> int:
        return self.requeued + self.dead_lettered + self.already_settled + self.deleted


@dataclass
class ClaimedBatch:
    queue: str
    consumer: str
    # (entry id, fields, deliveries counted by XPENDING) of each entry XCLAIM returned.
    entries: list[tuple[str, dict[bytes, bytes], int]] = field(default_factory=list)
    stats: ReclaimStats = field(default_factory=ReclaimStats)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Reclaimer:
    def __init__(self, redis: aioredis.Redis, *, max_deliveries: int, dead_letter_maxlen: int) -> None:
        self._redis = redis
        self._max_deliveries = max_deliveries
        self._dead_letter_maxlen = dead_letter_maxlen
        self._settle = redis.register_script(_SETTLE_LUA)

    async def reclaim_consumer(
        self, queue: str, consumer: str, *, min_idle_ms: int = 0, max_batches: int = 100
    ) -> ReclaimStats:
        """Re-add (or dead-letter) every entry pending for ``consumer`` on ``queue`` and idle for at
        least ``min_idle_ms``. Returns what was done; safe to run concurrently and repeatedly."""
        stream = keys.queue_stream(queue)
        stats = ReclaimStats()
        for _ in range(max_batches):
            try:
                pending = await self._redis.xpending_range(
                    stream,
                    keys.WORKER_GROUP,
                    "-",
                    "+",
                    BATCH,
                    consumername=consumer,
                    idle=min_idle_ms or None,
                )
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    return stats  # no stream or no group: nothing can be pending
                raise
            if not pending:
                break
            batch = await self.claim(queue, consumer, pending, min_idle_ms=min_idle_ms)
            stats.add(await self.settle(batch))
            if len(pending) < BATCH:
                break
        return stats

    async def claim(
        self, queue: str, consumer: str, pending: list[dict], *, min_idle_ms: int = 0
    ) -> ClaimedBatch:
        """Step 1: XCLAIM the ``pending`` entries (XPENDING rows) to the reclaimer consumer."""
        stream = keys.queue_stream(queue)
        batch = ClaimedBatch(queue=queue, consumer=consumer)
        delivered = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        if consumer == RECLAIMER:  # our own XCLAIM counted one delivery that never ran
            delivered = {entry_id: max(count - 1, 1) for entry_id, count in delivered.items()}
        claimed = await self._redis.xclaim(stream, keys.WORKER_GROUP, RECLAIMER, min_idle_ms, list(delivered))
        entries = {_text(entry_id): fields for entry_id, fields in claimed if entry_id is not None}
        gone = [entry_id for entry_id in delivered if entry_id not in entries]
        if gone:
            batch.stats.deleted, batch.stats.already_settled = await self._classify_gone(
                queue, stream, consumer, gone
            )
        batch.entries = [(entry_id, fields, delivered[entry_id]) for entry_id, fields in entries.items()]
        return batch

    async def settle(self, batch: ClaimedBatch) -> ReclaimStats:
        """Step 2, one script: XACK each claimed entry and, if that removed it from the pending
        list, re-add it or dead-letter it."""
        stats = batch.stats
        if not batch.entries:
            return stats
        args: list[bytes | str | int] = [keys.WORKER_GROUP, self._dead_letter_maxlen]
        for entry_id, fields, delivered in batch.entries:
            args += self._settlement(batch.queue, batch.consumer, entry_id, fields, delivered)
        stream = keys.queue_stream(batch.queue)
        requeued, dead, skipped = await self._settle(keys=[stream, keys.DEAD_LETTERS_STREAM], args=args)
        stats.requeued += int(requeued)
        stats.dead_lettered += int(dead)
        stats.already_settled += int(skipped)
        return stats

    def _settlement(
        self, queue: str, consumer: str, entry_id: str, fields: dict[bytes, bytes], delivered: int
    ) -> list[bytes | str | int]:
        raw = fields.get(keys.ENVELOPE_FIELD, b"")
        deliveries = delivered + int(fields.get(DELIVERIES_FIELD, b"0") or 0)
        try:
            env = messages_pb2.TaskEnvelope.FromString(raw)
            problem = None if raw else f"stream entry has no {keys.ENVELOPE_FIELD.decode()!r} field"
        except DecodeError as exc:
            env, problem = messages_pb2.TaskEnvelope(), f"undecodable envelope: {exc}"
        bound = log.bind(
            queue=queue,
            worker_id=consumer,
            entry_id=entry_id,
            run_id=env.run_id,
            node_id=env.node_id,
            attempt=env.attempt,
            deliveries=deliveries,
        )
        if problem is None and deliveries < self._max_deliveries:
            bound.info("delivery its worker will never acknowledge re-added to its queue")
            return [entry_id, "q", raw, deliveries]
        reason = problem or (
            f"delivered {deliveries} times; the worker running it died each time (poison message?)"
        )
        bound.error("delivery dead-lettered", reason=reason)
        letter = make_dead_letter(queue=queue, original_id=entry_id, raw=raw, reason=reason)
        return [entry_id, "d", letter.SerializeToString(), deliveries]

    async def _classify_gone(self, queue: str, stream: str, consumer: str, ids: list[str]) -> tuple[int, int]:
        """Pending ids XCLAIM did not return: deleted from the stream (Redis dropped them from the
        pending list: an alarm, the task must be restored from run state) or acknowledged meanwhile."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xrange(stream, min=entry_id, max=entry_id, count=1)
            found = await pipe.execute()
        deleted = [entry_id for entry_id, entries in zip(ids, found, strict=True) if not entries]
        if deleted:
            log.error(
                "ALARM: pending deliveries were deleted from their queue stream before being "
                "acknowledged; they cannot be re-added (the scheduler's recovery must restore "
                "those tasks from run state). Check stream trimming (only MINID below the oldest pending).",
                queue=queue,
                worker_id=consumer,
                entry_ids=deleted[:100],
                count=len(deleted),
            )
        return len(deleted), len(ids) - len(deleted)
