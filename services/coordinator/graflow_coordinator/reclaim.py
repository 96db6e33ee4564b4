"""Reclaiming the in-flight deliveries of a consumer that will never acknowledge them.

A reclaimed delivery is never put back on its queue: the attempt it carried is over, and the
scheduler, which owns attempts, decides what runs next (its next attempt goes to the queue's high
lane). For one (queue, consumer), in each lane of the queue in every cell of the key layout (docs/
architecture.md, "Redis Cluster: cells"): list its pending entries (XPENDING),
claim them to the consumer ``coordinator-reclaimer`` (XCLAIM), then settle each batch in one Lua
script: acknowledge the entry and, only if that acknowledgement removed it from
the pending list, append a ``TaskOutcome`` of its attempt to the cell's outcome stream (the
script's keys are the lane, the dead letters and the outcome stream of that cell: one slot): FAILED, ErrorInfo
``WorkerLost`` (retryable), ``worker_lost`` set. The scheduler redelivers the node at once as
attempt+1 without consuming its retry budget; a late outcome of the lost attempt (its worker was
only paused) is stale by then and changes nothing.

Poison messages are counted in deliveries of the node: the envelope's ``lost_attempts`` (earlier
attempts lost with their worker, counted by the scheduler) plus XPENDING's times-delivered of this
entry. When they reach ``max_deliveries`` the script appends the envelope to the dead letters and a
non-retryable ``PoisonMessage`` outcome instead, so the node fails with the reason and the message
can be listed and replayed. An undecodable entry goes to the dead letters only (no outcome can name
its node), and so does, with signing keys, an entry whose signature does not verify
(``BadSignature``: a forged envelope never becomes an outcome signed by the coordinator). The
outcomes the coordinator appends are signed with its key (graflow_runtime.signing).

Making the appends conditional on the XACK (which a MULTI cannot do) means that replicas reclaiming
the same worker at once, or a worker that commits its outcome in the middle of the reclaim, never
report an attempt twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import structlog
from google.protobuf.message import DecodeError
from redis.exceptions import ResponseError

from graflow_api.v1 import common_pb2, messages_pb2
from graflow_runtime import keys, metrics
from graflow_runtime.scripts import LuaScript
from graflow_runtime.signing import KEY_ID_FIELD, SIGNATURE_FIELD, UNSIGNED, BusKeys, Kind

from graflow_coordinator.deadletters import make_dead_letter

log = structlog.get_logger(__name__)

RECLAIMER = "coordinator-reclaimer"
BATCH = 1000
WORKER_LOST = "WorkerLost"
POISON_MESSAGE = "PoisonMessage"
_SETTLE = LuaScript.load(__package__, "settle_reclaim.lua")



@dataclass
class ReclaimStats:
    # Attempts reported to the scheduler as WorkerLost (it redelivers them as attempt+1).
    lost: int = 0
    # Deliveries past max_deliveries: dead-lettered, their node failed with PoisonMessage.
    poisoned: int = 0
    # Entries whose envelope cannot be decoded, or is badly signed: dead-lettered.
    undecodable: int = 0
    # Acknowledged by somebody else between XCLAIM and the settle script (worker commit, replica).
    already_settled: int = 0
    # Pending entries whose stream entry was deleted: an alarm (nothing left to report).
    deleted: int = 0

    def add(self, other: ReclaimStats) -> None:
        self.lost += other.lost
        self.poisoned += other.poisoned
        self.undecodable += other.undecodable
        self.already_settled += other.already_settled
        self.deleted += other.deleted

    @property
    def dead_lettered(self) -> int:
        return self.poisoned + self.undecodable

    @property
    def total(self) -> int:
        return self.lost + self.dead_lettered + self.already_settled + self.deleted

    def log_fields(self) -> dict[str, int]:
        return {
            "lost": self.lost,
            "poisoned": self.poisoned,
            "undecodable": self.undecodable,
            "already_settled": self.already_settled,
            "deleted": self.deleted,
        }


@dataclass
class ClaimedBatch:
    queue: str
    # The lane (one of keys.queue_lanes(queue, cell)) the entries are pending in.
    stream: str
    consumer: str
    # The cell of the lane: its dead letters and outcome stream settle the entries.
    cell: int = 0
    # What happened to the consumer, for the WorkerLost message ("was declared dead: ...").
    why: str = "stopped"
    # (entry id, fields, deliveries counted by XPENDING) of each entry XCLAIM returned.
    entries: list[tuple[str, dict[bytes, bytes], int]] = field(default_factory=list)
    stats: ReclaimStats = field(default_factory=ReclaimStats)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Reclaimer:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        max_deliveries: int,
        dead_letter_maxlen: int,
        bus_keys: BusKeys = UNSIGNED,
    ) -> None:
        self._redis = redis
        self._keys = bus_keys
        self._max_deliveries = max_deliveries
        self._dead_letter_maxlen = dead_letter_maxlen

    async def reclaim_consumer(
        self,
        queue: str,
        consumer: str,
        *,
        why: str = "stopped",
        min_idle_ms: int = 0,
        max_batches: int = 100,
    ) -> ReclaimStats:
        """Report as lost (or dead-letter) every entry pending for ``consumer`` in either lane of
        ``queue`` and idle for at least ``min_idle_ms``. ``why`` completes "worker <consumer> ..."
        in the WorkerLost message. Returns what was done; safe to run concurrently and repeatedly."""
        stats = ReclaimStats()
        for cell in keys.cells():
            for stream in keys.queue_lanes(queue, cell):
                stats.add(await self._reclaim_lane(
                    queue, stream, consumer, cell=cell, why=why, min_idle_ms=min_idle_ms,
                    max_batches=max_batches,
                ))
        return stats

    async def _reclaim_lane(
        self, queue: str, stream: str, consumer: str, *, cell: int, why: str, min_idle_ms: int,
        max_batches: int,
    ) -> ReclaimStats:
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
            batch = await self.claim(queue, stream, consumer, pending, min_idle_ms=min_idle_ms, cell=cell)
            batch.why = why
            stats.add(await self.settle(batch))
            if len(pending) < BATCH:
                break
        return stats

    async def claim(
        self, queue: str, stream: str, consumer: str, pending: list[dict], *, min_idle_ms: int = 0,
        cell: int = 0,
    ) -> ClaimedBatch:
        """Step 1: XCLAIM the ``pending`` entries (XPENDING rows of ``stream``, a lane of ``queue``
        in ``cell``) to the reclaimer consumer."""
        batch = ClaimedBatch(queue=queue, stream=stream, consumer=consumer, cell=cell)
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
        list, append its WorkerLost outcome (or dead-letter it)."""
        stats = batch.stats
        if not batch.entries:
            return stats
        args: list[bytes | str | int] = [keys.WORKER_GROUP, self._dead_letter_maxlen]
        for entry_id, fields, delivered in batch.entries:
            args += self._settlement(batch, entry_id, fields, delivered)
        lost, poisoned, undecodable, skipped = await _SETTLE.run(
            self._redis,
            [batch.stream, keys.dead_letters_stream(batch.cell), keys.outcomes_stream(batch.cell)],
            args,
        )
        stats.lost += int(lost)
        stats.poisoned += int(poisoned)
        stats.undecodable += int(undecodable)
        stats.already_settled += int(skipped)
        if int(poisoned) + int(undecodable):
            metrics.TASKS_DEAD_LETTERED.labels(batch.queue).inc(int(poisoned) + int(undecodable))
        return stats

    def _settlement(
        self, batch: ClaimedBatch, entry_id: str, fields: dict[bytes, bytes], delivered: int
    ) -> list[bytes | str]:
        """The settle script's 7 values of one entry (settle_reclaim.lua)."""
        queue, consumer = batch.queue, batch.consumer
        raw = fields.get(keys.ENVELOPE_FIELD, b"")
        envelope_signature = [fields.get(KEY_ID_FIELD, b""), fields.get(SIGNATURE_FIELD, b"")]
        problem = self._keys.fields_problem(Kind.ENVELOPE, raw, fields) if raw else None
        env = messages_pb2.TaskEnvelope()
        if problem is None:
            try:
                env = messages_pb2.TaskEnvelope.FromString(raw)
                problem = None if raw else f"stream entry has no {keys.ENVELOPE_FIELD.decode()!r} field"
                if problem is None and not (env.run_id and env.node_id and env.attempt):
                    problem = "undecodable envelope: run_id, node_id or attempt missing"
                if problem is None and keys.cell_of(env.run_id) != batch.cell:
                    problem = (f"envelope in the wrong cell: run {env.run_id!r} belongs to cell "
                               f"{keys.cell_of(env.run_id)}, read from cell {batch.cell}")
            except DecodeError as exc:
                env, problem = messages_pb2.TaskEnvelope(), f"undecodable envelope: {exc}"
        deliveries = env.lost_attempts + max(delivered, 1)
        bound = log.bind(
            queue=queue,
            stream=batch.stream,
            worker_id=consumer,
            entry_id=entry_id,
            run_id=env.run_id,
            node_id=env.node_id,
            attempt=env.attempt,
            deliveries=deliveries,
        )
        if problem is not None:
            bound.error("undecodable or badly signed delivery of a lost worker dead-lettered", reason=problem)
            letter = make_dead_letter(queue=queue, original_id=entry_id, raw=raw, reason=problem)
            return [entry_id, "", "", "", letter.SerializeToString(), *envelope_signature]
        lost = f"worker {consumer} {batch.why}; attempt {env.attempt} is lost"
        if deliveries < self._max_deliveries:
            bound.info("attempt lost with its worker; reported to the scheduler for redelivery")
            outcome = lost_outcome(env, consumer, WORKER_LOST, lost, retryable=True)
            return [entry_id, *self._signed(outcome), "", b"", b""]
        reason = (
            f"poison message: the worker running it died {deliveries} times "
            f"(max_deliveries {self._max_deliveries}); last: {lost}"
        )
        bound.error("poison message dead-lettered; its node fails", reason=reason)
        letter = make_dead_letter(queue=queue, original_id=entry_id, raw=raw, reason=reason)
        message = (
            f"the worker running it died {deliveries} times (last: {lost}); the delivery is in the "
            "dead letters (graflow dead-letters list)"
        )
        outcome = lost_outcome(env, consumer, POISON_MESSAGE, message, retryable=False)
        return [entry_id, *self._signed(outcome), letter.SerializeToString(), *envelope_signature]

    def _signed(self, outcome: messages_pb2.TaskOutcome) -> list[bytes]:
        """[outcome bytes, key id, HMAC] (empty key id and HMAC when unsigned)."""
        data = outcome.SerializeToString()
        signature = self._keys.sign(Kind.OUTCOME, data)
        return [data, signature.key_id, signature.mac] if signature else [data, b"", b""]

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
                "acknowledged; their attempts cannot be reported (the scheduler's recovery must "
                "restore those tasks from run state). Check stream trimming (only MINID below the "
                "oldest pending).",
                queue=queue,
                stream=stream,
                worker_id=consumer,
                entry_ids=deleted[:100],
                count=len(deleted),
            )
        return len(deleted), len(ids) - len(deleted)


def lost_outcome(
    env: messages_pb2.TaskEnvelope, worker_id: str, error_type: str, message: str, *, retryable: bool
) -> messages_pb2.TaskOutcome:
    """The outcome the coordinator reports for an attempt whose worker died before reporting it."""
    return messages_pb2.TaskOutcome(
        run_id=env.run_id,
        node_id=env.node_id,
        attempt=env.attempt,
        status=messages_pb2.TaskOutcome.STATUS_FAILED,
        error=common_pb2.ErrorInfo(type=error_type, message=message, retryable=retryable),
        worker_id=worker_id,
        finished_at_ms=int(time.time() * 1000),
        trace_context=env.trace_context,
        worker_lost=True,
    )
