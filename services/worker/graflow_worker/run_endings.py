"""Ended runs pushed to the worker within milliseconds (invariant 11).

The scheduler appends every run's end to the stream ``gf:ended`` (``keys.RUNS_ENDED``, fields
``r`` run id, ``s`` status) in the same script that ends the run. :class:`RunEndings` follows it
with ``XREAD BLOCK`` on a connection of its own, from the stream's last entry at start-up (runs
that ended before are caught by the consumer's check of each read batch), and hands every run id
to the :class:`~graflow_worker.cancellation.Cancellations` registry, which sets the cancel event of
the run's running tasks. On a Redis error it retries with backoff from the last entry it read,
so it misses nothing that is still in the stream (~100,000 ends). Between reads it logs the counts
of skipped deliveries (:meth:`Cancellations.log_skipped`).
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from graflow_runtime import keys
from graflow_runtime.backoff import Backoff
from graflow_runtime.streams import stream_id

from graflow_worker.cancellation import Cancellations
from graflow_worker.intake import sleep_unless

log = structlog.get_logger(__name__)

READ_COUNT = 1000


class RunEndings:
    def __init__(self, redis: aioredis.Redis, cancellations: Cancellations, *, block_ms: int = 1000) -> None:
        self._redis = redis
        self._cancellations = cancellations
        self._block_ms = block_ms
        self.last_id: bytes | None = None
        # Every end with an id after this one has reached the registry, once last_id passed it.
        self.history_start: tuple[int, int] | None = None
        self.received = 0

    async def start(self) -> None:
        """Remember where the stream ends now (call before the worker reads its queues)."""
        self.last_id = await self._tail()
        self.history_start = stream_id(self.last_id)

    def covers(self, cursor: bytes | None) -> bool:
        """True when every end after ``cursor`` (an id of the stream) is known here, up to the
        last entry applied: a run that was live when ``cursor`` was the last end, and that is not
        in the registry, had not ended when the stream was last read."""
        return (cursor is not None and self.history_start is not None
                and stream_id(cursor) >= self.history_start)

    def apply(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> int:
        """Hand the ended runs of ``entries`` (read after ``last_id``) to the registry."""
        runs: list[str] = []
        for entry_id, fields in entries:
            if self.last_id is None or stream_id(entry_id) > stream_id(self.last_id):
                self.last_id = entry_id
            run_id = fields.get(keys.RUN_ENDED_RUN_FIELD)
            if run_id:
                runs.append(run_id.decode())
        if runs:
            self.received += len(runs)
            self._cancellations.cancel(runs)
        return len(runs)

    async def _tail(self) -> bytes:
        newest = await self._redis.xrevrange(keys.RUNS_ENDED, count=1)
        return newest[0][0] if newest else b"0-0"

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the stream until ``stop`` is set."""
        backoff = Backoff(cap=2.0)
        try:
            while not stop.is_set():
                try:
                    if self.last_id is None:
                        await self.start()
                    await self.read_once()
                except (RedisError, OSError) as exc:
                    # Entries trimmed while disconnected would be missed: from now on, trust only
                    # what comes after the stream's end at reconnection (see covers()).
                    self.history_start = None
                    delay = backoff.next_delay()
                    log.warning("reading ended runs failed; retrying", error=str(exc),
                                retry_in_s=round(delay, 3))
                    await sleep_unless(stop, delay)
                    continue
                if self.history_start is None:
                    self.history_start = stream_id(await self._tail())
                backoff.reset()
                self._cancellations.log_skipped()
        finally:
            self._cancellations.log_skipped(force=True)

    async def read_once(self) -> int:
        """One blocking read; returns how many ended runs it brought."""
        assert self.last_id is not None
        response = await self._redis.xread({keys.RUNS_ENDED: self.last_id}, count=READ_COUNT,
                                           block=self._block_ms)
        return sum(self.apply(entries) for _stream, entries in response or ())
