"""A run's end with its sink results inline (``RunResult``): what ``WaitRun`` and ``SubmitRun``
with ``wait_ms`` answer, so that a client holds a run's result after one call.

The caller registers with the process's reader of ``gf:ended`` (api/ends.py), reads the run's
meta once, and waits only if the run is live. Once it ended (or ``wait_ms`` passed: the meta is
read again, so an end is never answered as "still running"), a SUCCEEDED run's sink results are
fetched from the result-store, one ``GetResults`` per run however many callers wait for it, and
sent inline when they total at most :data:`INLINE_RESULTS_MAX` bytes.
"""

from __future__ import annotations

import asyncio
import contextlib

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
            if meta and run_status_name(meta) not in ENDED_STATUSES and wait_ms > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ended, wait_ms / 1000)
                meta = await self.reader.meta(run_id)
        if not meta:
            raise RunNotFound(run_id)
        run = run_from_meta(run_id, meta)
        if run_status_name(meta) != "SUCCEEDED":
            return scheduler_pb2.RunResult(run=run)
        results, inline = await self._sink_results(run)
        return scheduler_pb2.RunResult(run=run, results=results, results_inline=inline)

    async def _sink_results(self, run: scheduler_pb2.Run) -> SinkResults:
        """One fetch per run at a time, shared by its callers (a caller that leaves does not stop
        it for the others)."""
        fetching = self._fetching.get(run.run_id)
        if fetching is None:
            fetching = asyncio.ensure_future(self._fetch(run))
            self._fetching[run.run_id] = fetching
            fetching.add_done_callback(lambda _: self._fetching.pop(run.run_id, None))
        return await asyncio.shield(fetching)

    async def _fetch(self, run: scheduler_pb2.Run) -> SinkResults:
        if not run.sink_node_ids:
            return [], True
        request = result_store_pb2.GetResultsRequest(run_id=run.run_id, node_ids=run.sink_node_ids)
        try:
            response = await self._downstream.call(self._stub.GetResults, request)
        except (DownstreamUnavailable, grpc.aio.AioRpcError) as exc:
            # The answer still carries the end; the client reads the results itself.
            log.warning("sink results not inline: result-store call failed", run_id=run.run_id, error=str(exc))
            return [], False
        size = sum(result.value.ByteSize() for result in response.results)
        if size > INLINE_RESULTS_MAX:
            return [], False
        return list(response.results), True
