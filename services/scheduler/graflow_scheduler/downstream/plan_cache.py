"""Compiled plans by graph hash: an in-process LRU in front of the result-store's graphs.

Submit stores the graph (``PutGraph``, skipped when this process stored it less than
``refresh_s`` ago: stored graphs expire a retention period after their last store or keep-alive)
and caches its plan; applying an outcome of a run whose plan is not cached (another replica took the
submit, or this process restarted) fetches the graph (``GetGraph``) and compiles it once, however
many callers ask at the same time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Iterable

import grpc
import structlog

from graflow_api.v1 import result_store_pb2, result_store_pb2_grpc, workflow_pb2
from graflow_runtime.grpc_client import Downstream

from graflow_scheduler.errors import GraphNotFound
from graflow_scheduler.graph.compiler import Limits, compile_spec
from graflow_scheduler.graph.plan import Plan
from graflow_scheduler.state.reader import RunReader

log = structlog.get_logger(__name__)

# Specs bigger than this (nodes, groups, edges and group members together, times one plus their
# loop edges, each of which walks the graph) are compiled in a worker thread so the event loop
# keeps serving; smaller ones compile inline in well under a millisecond.
_INLINE_COMPILE_WORK = 2000


def compiles_inline(spec: workflow_pb2.WorkflowSpec) -> bool:
    """Whether ``spec`` is small enough to compile on the event loop. Counts every part whose size
    the compiler's work grows with (not only the nodes: 10 nodes can carry 100,000 edges)."""
    size = len(spec.nodes) + len(spec.groups) + len(spec.edges)
    if size > _INLINE_COMPILE_WORK:
        return False
    size += sum(len(group.member_ids) for group in spec.groups)
    loops = sum(1 for edge in spec.edges if edge.loop)
    return size * (1 + loops) <= _INLINE_COMPILE_WORK


async def compile_off_loop(spec: workflow_pb2.WorkflowSpec, limits: Limits | None) -> Plan:
    if compiles_inline(spec):
        return compile_spec(spec, limits)
    return await asyncio.to_thread(compile_spec, spec, limits)


class PlanCache:
    def __init__(
        self,
        stub: result_store_pb2_grpc.ResultStoreStub,
        downstream: Downstream,
        *,
        capacity: int = 1024,
        refresh_s: float = 24 * 3600.0,
    ) -> None:
        self._stub = stub
        self._downstream = downstream
        self._capacity = capacity
        self._refresh_s = refresh_s
        self._plans: OrderedDict[str, Plan] = OrderedDict()
        # When this process last stored each graph (monotonic seconds), for the plans it holds.
        self._stored_at: dict[str, float] = {}
        self._loading: dict[str, asyncio.Future[Plan]] = {}

    def cached(self, graph_hash: str) -> Plan | None:
        plan = self._plans.get(graph_hash)
        if plan is not None:
            self._plans.move_to_end(graph_hash)
        return plan

    def put(self, graph_hash: str, plan: Plan) -> None:
        self._plans[graph_hash] = plan
        self._plans.move_to_end(graph_hash)
        while len(self._plans) > self._capacity:
            evicted, _ = self._plans.popitem(last=False)
            self._stored_at.pop(evicted, None)

    async def store(self, graph_hash: str, spec: workflow_pb2.WorkflowSpec, plan: Plan) -> None:
        """Make sure the result-store holds the graph (once per process, hash and ``refresh_s``: each
        store restarts its retention), cache the plan. Raises DownstreamUnavailable when the
        result-store cannot be reached."""
        now = time.monotonic()
        stored_at = self._stored_at.get(graph_hash, -math.inf)
        if self.cached(graph_hash) is None or now - stored_at >= self._refresh_s:
            request = result_store_pb2.PutGraphRequest(graph_hash=graph_hash, spec=spec)
            await self._downstream.call(self._stub.PutGraph, request)
            self._stored_at[graph_hash] = now
        self.put(graph_hash, plan)

    async def get(self, graph_hash: str) -> Plan:
        """The plan of ``graph_hash``. Raises GraphNotFound, SpecError (a stored graph that no
        longer compiles) or DownstreamUnavailable."""
        plan = self.cached(graph_hash)
        if plan is not None:
            return plan
        loading = self._loading.get(graph_hash)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[Plan] = asyncio.get_running_loop().create_future()
        self._loading[graph_hash] = future
        try:
            plan = await self._fetch(graph_hash)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it, nobody logs "never retrieved"
            raise
        finally:
            del self._loading[graph_hash]
        future.set_result(plan)
        self.put(graph_hash, plan)
        return plan

    async def _fetch(self, graph_hash: str) -> Plan:
        request = result_store_pb2.GetGraphRequest(graph_hash=graph_hash)
        try:
            response = await self._downstream.call(self._stub.GetGraph, request)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise GraphNotFound(graph_hash) from exc
            raise
        log.info("graph fetched from the result-store", graph_hash=graph_hash, nodes=len(response.spec.nodes))
        return await compile_off_loop(response.spec, None)


class RunGraphs:
    """Graph hash of each run (it never changes), remembered for the most recent live runs so that
    applying a batch of outcomes needs no extra round trip. A run is forgotten when this process
    sees it end (its outcomes no longer need the plan, bar a few late ones): ~270 bytes a run
    otherwise stayed until ``capacity`` runs were remembered, +27 MB over 100,000 runs
    (docs/performance.md, "Memory under a 1,000,000-task soak")."""

    def __init__(self, reader: RunReader, *, capacity: int = 100_000) -> None:
        self._reader = reader
        self._capacity = capacity
        self._hashes: OrderedDict[str, str] = OrderedDict()

    def remember(self, run_id: str, graph_hash: str) -> None:
        self._hashes[run_id] = graph_hash
        while len(self._hashes) > self._capacity:
            self._hashes.popitem(last=False)

    def forget(self, run_id: str) -> None:
        self._hashes.pop(run_id, None)

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._hashes

    async def hashes(self, run_ids: Iterable[str]) -> dict[str, str | None]:
        """Graph hash per run id; None for runs that do not exist (or expired)."""
        found: dict[str, str | None] = {}
        missing: list[str] = []
        for run_id in run_ids:
            known = self._hashes.get(run_id)
            if known is None:
                missing.append(run_id)
            else:
                found[run_id] = known
        if missing:
            for run_id, graph_hash in (await self._reader.graph_hashes(missing)).items():
                found[run_id] = graph_hash
                if graph_hash is not None:
                    self.remember(run_id, graph_hash)
        return found
