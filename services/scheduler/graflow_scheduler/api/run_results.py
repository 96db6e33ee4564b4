"""A run's end with its sink results inline (``RunResult``): what ``WaitRun`` and ``SubmitRun``
with ``wait_ms`` answer, so that a client holds a run's result after one call.

The caller registers with the process's reader of ``gf:ended`` (api/ends.py), reads the run's
meta once, and waits only if the run is live (``SubmitRun`` registers before it creates the run,
and reads nothing). Once it ended (or ``wait_ms`` passed: the meta is read again, so an end is
never answered as "still running"), a SUCCEEDED run's sink results are fetched from the
result-store, one ``GetResults`` per run however many callers wait for it, and sent inline when
they total at most :data:`INLINE_RESULTS_MAX` bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence

import grpc
import structlog

from graflow_api.v1 import result_store_pb2, result_store_pb2_grpc, scheduler_pb2
from graflow_runtime.grpc_client import Downstream, DownstreamUnavailable

from graflow_scheduler.api.ends import RunEnds
from graflow_scheduler.errors import RunNotFound
from graflow_scheduler.state.reader import RunReader
from graflow_scheduler.state.views import ENDED_STATUSES, run_from_meta, run_status_name

log = structlog.get_logger(__name__)

# Sink results larger than this in total are left to the client's own GetResults.
INLINE_RESULTS_MAX = 1024 * 1024

SinkResults = tuple[list[result_store_pb2.NodeResult], bool]


class RunResults:
    def __init__(
        self,
        reader: RunReader,
        ends: RunEnds,
        stub: result_store_pb2_grpc.ResultStoreStub,
        downstream: Downstream,
    ) -> None:
        self.reader = reader
        self.ends = ends
        self._stub = stub
        self._downstream = downstream
        self._fetching: dict[str, asyncio.Future[SinkResults]] = {}

    async def wait(self, run_id: str, wait_ms: int) -> scheduler_pb2.RunResult:
        """The run's end, or its live state once ``wait_ms`` passed. Raises RunNotFound."""
        with self.ends.waiting(run_id) as ended:
            meta = await self.reader.meta(run_id)
            if not meta:
                raise RunNotFound(run_id)
            if run_status_name(meta) in ENDED_STATUSES or wait_ms == 0:
                return await self._answer(run_id, meta)
            sinks = json.loads(meta.get(b"sinks", b"[]"))
            return await self.wait_registered(run_id, ended, wait_ms, sinks)

    async def wait_registered(
        self, run_id: str, ended: asyncio.Future[str], wait_ms: int, sinks: Sequence[str]
    ) -> scheduler_pb2.RunResult:
        """The end of a run whose caller registered ``ended`` (RunEnds.waiting) when the run was
        known to be live: after reading its status, or before creating it (SubmitRun). A success
        read from gf:ended fetches the sinks' results and reads the run concurrently."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(ended), wait_ms / 1000)
        if ended.done() and ended.result() == "SUCCEEDED":
            meta, results = await asyncio.gather(self.reader.meta(run_id), self._sink_results(run_id, sinks))
            if meta:
                return self._result(run_id, meta, results)
        # Read again: the end, or the run still going (also after an end the reader missed).
        meta = await self.reader.meta(run_id)
        if not meta:
            raise RunNotFound(run_id)
        return await self._answer(run_id, meta)

    async def _answer(self, run_id: str, meta: dict[bytes, bytes]) -> scheduler_pb2.RunResult:
        if run_status_name(meta) != "SUCCEEDED":
            return scheduler_pb2.RunResult(run=run_from_meta(run_id, meta))
        sinks = json.loads(meta.get(b"sinks", b"[]"))
        return self._result(run_id, meta, await self._sink_results(run_id, sinks))

    def _result(self, run_id: str, meta: dict[bytes, bytes], sink_results: SinkResults) -> scheduler_pb2.RunResult:
        results, inline = sink_results
        return scheduler_pb2.RunResult(
            run=run_from_meta(run_id, meta), results=results, results_inline=inline
        )

    async def _sink_results(self, run_id: str, sinks: Sequence[str]) -> SinkResults:
        """One fetch per run at a time, shared by its callers (a caller that leaves does not stop
        it for the others)."""
        fetching = self._fetching.get(run_id)
        if fetching is None:
            fetching = asyncio.ensure_future(self._fetch(run_id, sinks))
            self._fetching[run_id] = fetching
            fetching.add_done_callback(lambda _: self._fetching.pop(run_id, None))
        return await asyncio.shield(fetching)

    async def _fetch(self, run_id: str, sinks: Sequence[str]) -> SinkResults:
        if not sinks:
            return [], True
        request = result_store_pb2.GetResultsRequest(run_id=run_id, node_ids=sinks)
        try:
            response = await self._downstream.call(self._stub.GetResults, request)
        except (DownstreamUnavailable, grpc.aio.AioRpcError) as exc:
            # The answer still carries the end; the client reads the results itself.
            log.warning("sink results not inline: result-store call failed", run_id=run_id, error=str(exc))
            return [], False
        size = sum(result.value.ByteSize() for result in response.results)
        if size > INLINE_RESULTS_MAX:
            return [], False
        return list(response.results), True
