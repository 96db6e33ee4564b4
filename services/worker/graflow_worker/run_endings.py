"""Ended runs reach the worker's running tasks within 0.5 s (invariant 11).

The scheduler appends every run's end to its cell's stream ``gf:ended`` (``keys.runs_ended(cell)``,
fields ``r`` run id, ``s`` status) in the same script that ends the run; the worker follows every
cell's stream, one :class:`RunEndings` per cell. :class:`RunEndings` follows it
from the stream's last entry at start-up (runs that ended before are caught by the consumer's check
of each read batch) and hands every run id to the
:class:`~graflow_worker.cancellation.Cancellations` registry, which sets the cancel event of the
run's running tasks.

Two readers advance the same position. The consumer reads the stream in the round trip of every
queue read (:meth:`absorb`), which is what decides queued deliveries. This module's loop reads it
only while a task is running and the consumer has not read it for ``poll_s`` (a consumer blocked
in its queue read, or every slot busy): a running body then sees its run's end within
``poll_s`` plus one read, and no end costs any worker anything (an ``XREAD BLOCK`` would wake every
worker at every run's end: one round trip per worker per run). On a Redis error it retries with
backoff from the last entry it read, so it misses nothing that is still in the stream (~100,000
ends). Every tick it logs the counts of skipped deliveries (:meth:`Cancellations.log_skipped`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis
import structlog

from graflow_runtime import keys
from graflow_runtime.backoff import Backoff
from graflow_runtime.redis_client import REDIS_ERRORS
from graflow_runtime.streams import stream_id, tail_id

from graflow_worker.cancellation import Cancellations
from graflow_worker.intake import sleep_unless

log = structlog.get_logger(__name__)

READ_COUNT = 1000
# How often the loop looks at the stream while a task runs: the end of a running body's run reaches
# it within this plus one read, under the 0.5 s bound.
POLL_S = 0.2


class RunEndings:
    def __init__(
        self, redis: aioredis.Redis, cancellations: Cancellations, *, poll_s: float = POLL_S, cell: int = 0
    ) -> None:
        self._redis = redis
        # The ended-runs stream of the cell this follows.
        self.stream = keys.runs_ended(cell)
        self._cancellations = cancellations
        self._poll_s = poll_s
        self._read_at = 0.0  # monotonic time of the last read of the stream, by either reader
        self.last_id: bytes | None = None
        # Every end with an id after this one has reached the registry, once last_id passed it.
        self.history_start: tuple[int, int] | None = None
        self.received = 0

    async def start(self) -> None:
        """Remember where the stream ends now (call before the worker reads its queues)."""
        self.last_id = await tail_id(self._redis, self.stream)
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

    def absorb(self, response: Any) -> int:
        """Apply an ``XREAD`` response of the stream (read from ``last_id``); returns its entries."""
        self._read_at = time.monotonic()
        read = 0
        for _stream, entries in response or ():
            read += len(entries)
            self.apply(entries)
        return read

    def _due(self) -> bool:
        return (self._cancellations.has_running_tasks()
                and time.monotonic() - self._read_at >= self._poll_s)

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the stream while tasks run, until ``stop`` is set."""
        backoff = Backoff(cap=2.0)
        try:
            while not await sleep_unless(stop, self._poll_s):
                self._cancellations.log_skipped()
                if not self._due() and self.history_start is not None:
                    continue
                try:
                    if self.last_id is None:
                        await self.start()
                    await self.read_once()
                except REDIS_ERRORS as exc:
                    # Entries trimmed while disconnected would be missed: from now on, trust only
                    # what comes after the stream's end at reconnection (see covers()).
                    self.history_start = None
                    delay = backoff.next_delay()
                    log.warning("reading ended runs failed; retrying", error=str(exc),
                                retry_in_s=round(delay, 3))
                    await sleep_unless(stop, delay)
                    continue
                if self.history_start is None:
                    self.history_start = stream_id(await tail_id(self._redis, self.stream))
                backoff.reset()
        finally:
            self._cancellations.log_skipped(force=True)

    async def read_once(self) -> int:
        """One read of the ends after ``last_id``; returns how many entries it brought."""
        assert self.last_id is not None
        return self.absorb(await self._redis.xread({self.stream: self.last_id}, count=READ_COUNT))
