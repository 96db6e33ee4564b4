"""Group commit of finished attempts (architecture step 4).

Finished attempts queue up while the previous commit is in flight; the flusher takes everything
queued (up to ``commit_batch_max``) and commits it in two steps:

1. small results (encoded NodeResult at most ``inline_max_bytes``, the worker's
   INLINE_RESULT_MAX_BYTES) go inline in their outcome (``TaskOutcome.result``): the scheduler
   stores them when it applies the outcome, atomically with it. The larger ones go in one
   ``PutResults`` (split only when their values together exceed 8 MiB), made only when there are
   any;
2. one Lua script (atomic like ``MULTI``/``EXEC``, without its per-command replies: about a
   quarter of the client CPU): ``XADD gf:outcomes`` (field ``o`` = TaskOutcome bytes, and ``k``/``s``
   = its key id and HMAC when the worker has signing keys) per attempt and the ``XACK`` of every
   delivery on its queue stream. With several cells (docs/architecture.md, "Redis Cluster:
   cells") the batch is split by the cell the deliveries were read from: one script call per
   cell, with that cell's outcome stream and lanes (one slot), all in one pipeline (one round
   trip). Each call is atomic, a batch spanning cells is not: when a call fails, the whole batch
   is retried, and the calls that had gone through append their outcomes again (acknowledging
   nothing twice); the scheduler ignores an outcome of an attempt it applied already (a duplicate),
   as it does when a commit's reply is lost.

Traces (docs/operations.md, "Traces"): with an exporter, each attempt's span "commit", child of its
"task" span, covers its batch's commit, and its outcome carries the commit's context on to the
scheduler's "apply". The batch's PutResults is made in the context of its first attempt's commit.

A delivery is acknowledged only together with its outcome, after its result is stored or inside
it. Only after the script ran are the slots released. When the result-store (for a batch with a
large result) or Redis is unavailable the batch is kept, nothing is acknowledged, the intake is
paused and the commit is retried with bounded backoff until it goes through; then the intake
resumes by itself. A batch of small results only never waits for the result-store.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import redis.asyncio as aioredis
import structlog

from graflow_api.v1 import common_pb2, messages_pb2
from graflow_api.v1 import result_store_pb2 as rs_pb2
from graflow_api.v1 import result_store_pb2_grpc as rs_grpc
from graflow_runtime import keys, telemetry
from graflow_runtime.backoff import Backoff
from graflow_runtime.grpc_client import Downstream, DownstreamUnavailable
from graflow_runtime.limits import MAX_RESULT_BYTES
from graflow_runtime.redis_client import REDIS_ERRORS
from graflow_runtime.scripts import LuaScript, ScriptArg, ScriptCall
from graflow_runtime.signing import UNSIGNED, BusKeys, Kind

from graflow_worker.intake import Intake
from graflow_worker.runner import Execution, failure

log = structlog.get_logger(__name__)

PAUSE_RESULT_STORE = "result-store unavailable"
PAUSE_REDIS = "redis unavailable"
STALE = rs_pb2.PutResultsResponse.DISPOSITION_STALE
# Results per PutResults request, by value bytes (the gRPC message limit is 64 MiB).
PUT_REQUEST_BYTES = 8 * 1024 * 1024
_APPEND_AND_ACK = LuaScript.load(__package__, "append_and_ack.lua")



@dataclass
class Finished:
    """An attempt waiting for its commit, and the delivery it came from."""

    stream: str
    entry_id: bytes
    execution: Execution
    on_committed: Callable[[], None]
    # The cell of the delivery's lanes (its run's cell): its outcome goes to that cell's stream.
    cell: int = 0


class Committer:
    def __init__(self, redis: aioredis.Redis, *, result_store: Downstream, stub: rs_grpc.ResultStoreStub,
                 intake: Intake, batch_max: int, inline_max_bytes: int, bus_keys: BusKeys = UNSIGNED) -> None:
        self._redis = redis
        self._keys = bus_keys
        self._downstream = result_store
        self._stub = stub
        self._intake = intake
        self._batch_max = batch_max
        self._inline_max_bytes = inline_max_bytes
        self._queue: deque[Finished] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.batches = 0

    def submit(self, item: Finished) -> None:
        self._queue.append(item)
        self._idle.clear()
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def wait_idle(self) -> None:
        """Wait until everything submitted so far is committed."""
        await self._idle.wait()

    async def run(self) -> None:
        """The flusher: commit batches until cancelled."""
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._batch_max))]
            await self._commit(batch)
            self.batches += 1
            for item in batch:
                item.on_committed()

    async def _commit(self, batch: list[Finished]) -> None:
        spans = telemetry.SpanBatch()
        try:
            if telemetry.tracing_enabled():
                for item in batch:
                    outcome = item.execution.outcome
                    context = spans.child("commit", outcome.trace_context, {
                        "graflow.run_id": outcome.run_id, "graflow.node_id": outcome.node_id,
                        "graflow.attempt": outcome.attempt})
                    outcome.trace_context.clear()
                    outcome.trace_context.update(context)
            await self._store_results(batch)
            await self._append_and_ack(batch)
        finally:
            spans.end()

    async def _store_results(self, batch: list[Finished]) -> None:
        """Small results into their outcomes; the others stored with PutResults."""
        large: list[Finished] = []
        for item in batch:
            result = item.execution.result
            if result is None:
                continue
            if len(result.value.data) > MAX_RESULT_BYTES:
                outcome = item.execution.outcome
                log.error("result over the limit not stored; the attempt fails", run_id=outcome.run_id,
                          node_id=outcome.node_id, size=len(result.value.data), limit=MAX_RESULT_BYTES)
                _fail(item, failure(
                    "ResultTooLarge",
                    f"the result of node {outcome.node_id!r} is {len(result.value.data)} bytes, over the "
                    f"limit of {MAX_RESULT_BYTES} bytes (MAX_RESULT_BYTES); store large data elsewhere "
                    "and return a reference to it",
                    retryable=False,
                ))
            elif result.ByteSize() <= self._inline_max_bytes:
                item.execution.outcome.result.CopyFrom(result)
            else:
                large.append(item)
        if not large:
            return
        chunk: list[Finished] = []
        size = 0
        for item in large:
            value_size = len(item.execution.result.value.data)  # type: ignore[union-attr]
            if chunk and size + value_size > PUT_REQUEST_BYTES:
                await self._put(chunk)
                chunk, size = [], 0
            chunk.append(item)
            size += value_size
        if chunk:
            await self._put(chunk)
        self._intake.resume(PAUSE_RESULT_STORE)

    async def _put(self, items: list[Finished]) -> None:
        """One PutResults, retried while the result-store is unavailable. A rejected batch is retried
        result by result, so one bad value (e.g. over the size limit) fails only its own attempt."""
        request = rs_pb2.PutResultsRequest(results=[item.execution.result for item in items])
        backoff = Backoff()
        while True:
            try:
                with telemetry.trace_context(items[0].execution.outcome.trace_context):
                    response = await self._downstream.call(self._stub.PutResults, request)
                break
            except DownstreamUnavailable as exc:
                self._intake.pause(PAUSE_RESULT_STORE)
                delay = backoff.next_delay()
                log.warning("cannot store results; keeping the batch and retrying", error=str(exc),
                            results=len(items), retry_in_s=round(delay, 3))
                await asyncio.sleep(delay)
            except grpc.aio.AioRpcError as exc:
                if len(items) > 1:
                    for item in items:
                        await self._put([item])
                    return
                log.error("result-store rejected a result", code=exc.code().name, details=exc.details())
                _fail_unstored(items[0], exc)
                return
        for item, disposition in zip(items, response.dispositions, strict=False):
            if disposition == STALE:
                outcome = item.execution.outcome
                log.info("result is stale: a newer attempt is stored (the outcome is still reported; "
                         "the scheduler fences it)", run_id=outcome.run_id, node_id=outcome.node_id,
                         attempt=outcome.attempt)

    async def _append_and_ack(self, batch: list[Finished]) -> None:
        by_cell: dict[int, list[Finished]] = {}
        for item in batch:
            by_cell.setdefault(item.cell, []).append(item)
        calls = [self._call(cell, items) for cell, items in by_cell.items()]
        backoff = Backoff()
        while True:
            try:
                await _APPEND_AND_ACK.run_many(self._redis, calls)
            except REDIS_ERRORS as exc:  # OOM, connection lost
                self._intake.pause(PAUSE_REDIS)
                delay = backoff.next_delay()
                log.warning("cannot append outcomes; keeping the batch and retrying", error=str(exc),
                            batch=len(batch), retry_in_s=round(delay, 3))
                await asyncio.sleep(delay)
                continue
            break
        self._intake.resume(PAUSE_REDIS)

    def _call(self, cell: int, items: list[Finished]) -> ScriptCall:
        """The append_and_ack.lua call of ``items`` (deliveries of ``cell``): that cell's outcome
        stream and lanes, so one slot."""
        acks: dict[str, list[bytes]] = {}
        for item in items:
            acks.setdefault(item.stream, []).append(item.entry_id)
        args: list[ScriptArg] = [keys.OUTCOME_FIELD, keys.WORKER_GROUP, len(items)]
        for item in items:
            data = item.execution.outcome.SerializeToString()
            signature = self._keys.sign(Kind.OUTCOME, data)
            args += [data, signature.key_id, signature.mac] if signature else [data, "", ""]
        for ids in acks.values():
            args += [len(ids), *ids]
        return [keys.outcomes_stream(cell), *acks], args


def _fail_unstored(item: Finished, exc: grpc.aio.AioRpcError) -> None:
    """The result-store refused the result (a business error): the attempt fails instead. An invalid
    or too large result (INVALID_ARGUMENT, RESOURCE_EXHAUSTED) fails the same way again: not
    retryable."""
    _fail(item, failure(
        "ResultRejected", f"the result-store rejected the result: {exc.code().name}: {exc.details()}",
        retryable=exc.code() not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ))


def _fail(item: Finished, error: common_pb2.ErrorInfo) -> None:
    """The attempt fails with ``error`` instead of succeeding; its result is dropped."""
    outcome: messages_pb2.TaskOutcome = item.execution.outcome
    outcome.status = messages_pb2.TaskOutcome.STATUS_FAILED
    outcome.has_result = False
    outcome.error.CopyFrom(error)
    item.execution.result = None
