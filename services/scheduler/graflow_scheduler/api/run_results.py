"""A run's end with its sink results inline (``RunResult``): what ``WaitRun`` and ``SubmitRun``
with ``wait_ms`` answer, so that a client holds a run's result after one call.

The caller registers with the process's reader of ``gf:ended`` (api/ends.py), reads the run once,
and waits only if the run is live (``SubmitRun`` registers before it creates the run, and reads
nothing first). Once the run ended, or ``wait_ms`` passed, the run is read again, so an end is
never answered as "still running". Each read is one round trip (``run_result.lua``): the run's
meta and, for a SUCCEEDED run, its sinks' results when they total at most
:data:`INLINE_RESULTS_MAX` bytes, read from the result-store's hash of the run (``gf:res:{R}``,
same hash tag) rather than through a ``GetResults`` call (docs/performance.md, "One call to
submit and wait").
"""

from __future__ import annotations

import asyncio
import contextlib

from graflow_api.v1 import common_pb2, scheduler_pb2

from graflow_scheduler.api.ends import RunEnds
from graflow_scheduler.errors import RunNotFound
from graflow_scheduler.state.reader import RunReader
from graflow_scheduler.state.views import run_from_meta, run_status_name

_ENDED = frozenset(
    {common_pb2.RUN_STATUS_SUCCEEDED, common_pb2.RUN_STATUS_FAILED, common_pb2.RUN_STATUS_CANCELED}
)
# Sink results larger than this in total are left to the client's own GetResults.
INLINE_RESULTS_MAX = 1024 * 1024


class RunResults:
    def __init__(self, reader: RunReader, ends: RunEnds) -> None:
        self.reader = reader
        self.ends = ends

    async def wait(self, run_id: str, wait_ms: int) -> scheduler_pb2.RunResult:
        """The run's end, or its live state once ``wait_ms`` passed. Raises RunNotFound."""
        with self.ends.waiting(run_id) as ended:
            answer = await self._read(run_id)
            if answer.run.status in _ENDED or wait_ms == 0:
                return answer
            return await self.wait_registered(run_id, ended, wait_ms)

    async def wait_registered(
        self, run_id: str, ended: asyncio.Future[str], wait_ms: int
    ) -> scheduler_pb2.RunResult:
        """The end of a run whose caller registered ``ended`` (RunEnds.waiting) while the run was
        known to be live: after reading it, or before creating it (SubmitRun)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(ended), wait_ms / 1000)
        return await self._read(run_id)

    async def _read(self, run_id: str) -> scheduler_pb2.RunResult:
        read = await self.reader.run_result(run_id, inline_max_bytes=INLINE_RESULTS_MAX)
        if not read.meta:
            raise RunNotFound(run_id)
        answer = scheduler_pb2.RunResult(run=run_from_meta(run_id, read.meta))
        if run_status_name(read.meta) == "SUCCEEDED":
            answer.results_inline = read.inline
            answer.results.extend(read.results)
        return answer

