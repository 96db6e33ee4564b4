"""Run ends, learned from one reader of ``gf:ended`` per cell and scheduler process.

``finish_run`` (state/common.lua) appends every run's end, whatever its status and whichever
replica applied it, to the stream ``gf:ended`` of the run's cell (``keys.runs_ended``) in the script
that ends the run. :class:`RunEnds` follows each cell's stream with one blocking ``XREAD`` at a
time, on a connection of its own, and wakes the callers waiting for the runs it reads
(``WaitRun``, ``SubmitRun`` with ``wait_ms``, terminal-only ``WatchRun``). So a waiter costs
nothing per event of its run, and a run's end costs the process one read, shared by all its
waiters and by the other ends read in the same batch.

No lost wake-up: a caller registers (:meth:`RunEnds.waiting`), then reads the run's status once,
then waits. An end applied before the status read shows in it; one applied after the
registration is read later by its cell's reader (its position was taken before the server took
calls) and wakes the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import redis.asyncio as aioredis
import structlog

from graflow_runtime import keys
from graflow_runtime.loops import BackgroundLoop
from graflow_runtime.streams import tail_id

log = structlog.get_logger(__name__)

READ_COUNT = 1000


class RunEnds:
    """Follows the ended-runs stream of every cell from its tail at :meth:`start_reading` (one
    reader per cell: a blocking read stays in one slot); run id -> futures of its waiters."""

    def __init__(self, redis: aioredis.Redis, *, block_ms: int = 5000) -> None:
        self.redis = redis
        self.block_ms = block_ms
        self._waiters: dict[str, set[asyncio.Future[str]]] = {}
        self._readers = [_CellEnds(self, cell) for cell in keys.cells()]

    async def start_reading(self) -> None:
        """Take each stream's tail, then follow them. Called before the server takes calls, so
        every end after any caller's registration comes after these positions."""
        for reader in self._readers:
            await reader.start_reading()

    async def stop(self) -> None:
        for reader in self._readers:
            await reader.stop()

    @contextlib.contextmanager
    def waiting(self, run_id: str) -> Iterator[asyncio.Future[str]]:
        """A future set to the run's ended status when the reader reads its end (register first,
        then read the status: see the module's docstring)."""
        ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(run_id, set()).add(ended)
        try:
            yield ended
        finally:
            waiters = self._waiters.get(run_id)
            if waiters is not None:
                waiters.discard(ended)
                if not waiters:
                    del self._waiters[run_id]

    @property
    def waiting_runs(self) -> int:
        return len(self._waiters)

    def wake(self, fields: dict[bytes, bytes]) -> None:
        """Wake the waiters of the run an ended-runs entry (``fields``) names."""
        run_id = fields.get(keys.RUN_ENDED_RUN_FIELD, b"").decode()
        waiters = self._waiters.get(run_id)
        if not waiters:
            return
        status = fields.get(keys.RUN_ENDED_STATUS_FIELD, b"").decode()
        for ended in waiters:
            if not ended.done():
                ended.set_result(status)


class _CellEnds(BackgroundLoop):
    """The reader of one cell's ended-runs stream, waking the waiters of :class:`RunEnds`."""

    name = "run-ends"

    def __init__(self, ends: RunEnds, cell: int) -> None:
        super().__init__()
        self.ends = ends
        self.stream = keys.runs_ended(cell)
        self.last_id: bytes | None = None

    async def start_reading(self) -> None:
        self.last_id = await tail_id(self.ends.redis, self.stream)
        self.start()

    async def step(self) -> float:
        assert self.last_id is not None, "start_reading() first"
        with self.interruptible():
            response = await self.ends.redis.xread(
                {self.stream: self.last_id}, count=READ_COUNT, block=self.ends.block_ms
            )
        for _stream, entries in response or ():
            for entry_id, fields in entries:
                self.last_id = entry_id
                self.ends.wake(fields)
        return 0.0
