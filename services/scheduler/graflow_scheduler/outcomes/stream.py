"""The scheduler's side of a cell's outcome stream (``gf:outcomes`` in the default layout): its
consumer group, reads (own pending entries, new entries, entries claimed from dead consumers),
acknowledgement together with dead letters (in the cell's dead-letter stream), and trimming below
the oldest entry any group still needs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ResponseError

from graflow_api.v1 import messages_pb2
from graflow_runtime import keys
from graflow_runtime.streams import add_dead_letter, stream_id, trim_below

log = structlog.get_logger(__name__)

Entry = tuple[bytes, dict[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class DeadOutcome:
    entry_id: bytes
    reason: str
    raw: bytes
    outcome: messages_pb2.TaskOutcome | None = None

    def to_proto(self, now_ms: int, stream: str) -> messages_pb2.DeadLetter:
        # `queue` stays empty: an outcome is not a delivery, so the coordinator's replay (which
        # appends `raw` to a queue as an envelope) must refuse it; the reason names the stream.
        letter = messages_pb2.DeadLetter(
            original_id=self.entry_id.decode(),
            reason=f"{stream}: {self.reason}",
            raw=self.raw,
            dead_at_ms=now_ms,
        )
        if self.outcome is not None:
            letter.run_id = self.outcome.run_id
            letter.node_id = self.outcome.node_id
            letter.attempt = self.outcome.attempt
        return letter


class OutcomeStream:
    """The outcome stream of ``cell``: its consumer reads, acknowledges and trims it."""

    def __init__(self, redis: aioredis.Redis, consumer: str, cell: int = 0) -> None:
        self.redis = redis
        self.consumer = consumer
        self.cell = cell
        self.stream = keys.outcomes_stream(cell)
        self.group = keys.SCHEDULER_GROUP

    async def ensure_group(self) -> None:
        """Create the group (and the stream) if missing; reading starts with the stream's start, so
        outcomes appended before the first scheduler started are not lost."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read_own_pending(self, count: int) -> list[Entry]:
        """Entries delivered to this consumer earlier and not acknowledged (e.g. before a crash)."""
        return await self._read("0", count, None)

    async def read_new(self, count: int, block_ms: int) -> list[Entry]:
        return await self._read(">", count, block_ms)

    async def _read(self, start: str, count: int, block_ms: int | None) -> list[Entry]:
        response = await self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: start}, count=count, block=block_ms
        )
        if not response:
            return []
        # Own pending entries that were deleted meanwhile come back with no fields.
        return [(entry_id, fields or {}) for entry_id, fields in response[0][1]]

    async def claim_idle(self, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over entries that other consumers (dead replicas) left idle for ``min_idle_ms``."""
        claimed: list[Entry] = []
        start = "0-0"
        while len(claimed) < count:
            next_start, entries, deleted = await self.redis.xautoclaim(
                self.stream, self.group, self.consumer, min_idle_ms, start, count=count - len(claimed)
            )
            claimed.extend((entry_id, fields or {}) for entry_id, fields in entries)
            if deleted:
                log.error(
                    "claimed outcomes were deleted from the stream before being applied; "
                    "their nodes stay READY until re-run (stream trimmed below pending entries?)",
                    deleted=[d.decode() for d in deleted],
                )
                await self.redis.xack(self.stream, self.group, *deleted)
            start = next_start.decode() if isinstance(next_start, bytes) else next_start
            if start == "0-0":
                break
        return claimed

    async def delivery_counts(self, entry_ids: Sequence[bytes]) -> dict[bytes, int]:
        """How many times each of this consumer's pending entries was delivered (XPENDING)."""
        if not entry_ids:
            return {}
        ordered = sorted(entry_ids, key=stream_id)
        rows = await self.redis.xpending_range(
            self.stream,
            self.group,
            min=ordered[0],
            max=ordered[-1],
            count=len(ordered) * 4 + 100,
            consumername=self.consumer,
        )
        wanted = set(entry_ids)
        return {row["message_id"]: row["times_delivered"] for row in rows if row["message_id"] in wanted}

    async def ack(self, entry_ids: Sequence[bytes], dead: Sequence[DeadOutcome]) -> None:
        """Dead letters and acknowledgements in one MULTI (the cell's dead-letter stream and its
        outcome stream: one slot): a dead-lettered outcome is acked only together with its dead
        letter."""
        if not entry_ids:
            return
        now_ms = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=True) as pipe:
            for letter in dead:
                data = letter.to_proto(now_ms, self.stream).SerializeToString()
                add_dead_letter(pipe, data, cell=self.cell)
            pipe.xack(self.stream, self.group, *entry_ids)
            await pipe.execute()

    async def trim(self, *, approximate: bool = True) -> int:
        """XTRIM MINID below the oldest entry any group of the stream still needs (its oldest
        pending entry, else the first entry after its last delivered one)."""
        groups = await self.redis.xinfo_groups(self.stream)
        floor: tuple[int, int] | None = None
        for group in groups:
            name = group["name"]
            last = stream_id(group["last-delivered-id"])
            needed = (last[0], last[1] + 1)
            if group["pending"]:
                summary = await self.redis.xpending(self.stream, name)
                needed = min(needed, stream_id(summary["min"]))
            floor = needed if floor is None else min(floor, needed)
        if floor is None:
            return 0
        if not approximate:
            return await self.redis.xtrim(self.stream, minid=f"{floor[0]}-{floor[1]}", approximate=False)
        return await trim_below(self.redis, self.stream, floor)
