"""Test helpers of the scheduler's own tests (not shipped: owned by the test_utils target).

Spec builders, and recording test doubles of the two downstream services' gRPC APIs, served by
a real gRPC server on a free port (the scheduler talks to them over the network as in production).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

import grpc
import redis.asyncio as aioredis

from graflow_api.v1 import (
    common_pb2,
    coordinator_pb2,
    coordinator_pb2_grpc,
    messages_pb2,
    result_store_pb2,
    result_store_pb2_grpc,
    workflow_pb2,
)
from graflow_runtime import keys
from graflow_runtime.graphs import graph_hash

from graflow_scheduler.compiler import compile_spec
from graflow_scheduler.plan import Plan
from graflow_scheduler.runids import new_run_id
from graflow_scheduler.state import AppliedOutcome, OutcomeToApply, RunStore

Kind = workflow_pb2.GroupPolicy.Kind


def node(node_id: str, task_type: str = "", **fields: object) -> workflow_pb2.NodeSpec:
    return workflow_pb2.NodeSpec(id=node_id, task_type=task_type or f"t_{node_id}", **fields)


def group(
    group_id: str,
    members: Sequence[str],
    kind: int = workflow_pb2.GroupPolicy.KIND_STRICT,
    *,
    min_success: int = 0,
    critical: Sequence[str] = (),
) -> workflow_pb2.GroupSpec:
    policy = workflow_pb2.GroupPolicy(kind=kind, min_success=min_success, critical_ids=list(critical))
    return workflow_pb2.GroupSpec(id=group_id, member_ids=list(members), policy=policy)


def spec(
    nodes: Iterable[str | workflow_pb2.NodeSpec],
    edges: Iterable[str] = (),
    groups: Iterable[workflow_pb2.GroupSpec] = (),
    *,
    name: str = "wf",
    defaults: workflow_pb2.RunDefaults | None = None,
) -> workflow_pb2.WorkflowSpec:
    """``spec(["a", "b"], ["a>b"])``: task nodes (ids or NodeSpecs), edges "from>to", groups."""
    built = workflow_pb2.WorkflowSpec(name=name)
    for item in nodes:
        built.nodes.append(node(item) if isinstance(item, str) else item)
    for edge in edges:
        src, dst = edge.split(">")
        built.edges.add(from_id=src, to_id=dst)
    built.groups.extend(groups)
    if defaults is not None:
        built.defaults.CopyFrom(defaults)
    return built


def outcome(
    run_id: str,
    node_id: str,
    attempt: int = 1,
    *,
    ok: bool = True,
    error_type: str = "ValueError",
    retryable: bool = True,
    worker: str = "w1",
) -> messages_pb2.TaskOutcome:
    result = messages_pb2.TaskOutcome(
        run_id=run_id,
        node_id=node_id,
        attempt=attempt,
        status=messages_pb2.TaskOutcome.STATUS_SUCCEEDED if ok else messages_pb2.TaskOutcome.STATUS_FAILED,
        worker_id=worker,
    )
    if not ok:
        result.error.CopyFrom(
            common_pb2.ErrorInfo(type=error_type, message=f"{node_id} broke", retryable=retryable)
        )
    return result


async def runs_ended(redis: aioredis.Redis) -> list[tuple[str, str]]:
    """(run id, status) of every entry of gf:ended (what workers read), in order."""
    return [
        (fields[keys.RUN_ENDED_RUN_FIELD].decode(), fields[keys.RUN_ENDED_STATUS_FIELD].decode())
        for _, fields in await redis.xrange(keys.RUNS_ENDED)
    ]


class RecordingCoordinator(coordinator_pb2_grpc.CoordinatorServicer):
    """Records Dispatch calls; deduplicates by (run, node, attempt) like the real one; can be
    told to answer UNAVAILABLE a number of times."""

    def __init__(self) -> None:
        self.requests: list[coordinator_pb2.DispatchRequest] = []
        self.unavailable_times = 0
        self._seen: set[tuple[str, str, int]] = set()
        self.changed = asyncio.Condition()

    @property
    def deliveries(self) -> list[coordinator_pb2.Delivery]:
        return [d for r in self.requests for d in r.deliveries]

    def delivered(self, run_id: str | None = None) -> list[tuple[str, int]]:
        """(node, attempt) of every delivery (of one run), in order, duplicates included."""
        return [
            (d.envelope.node_id, d.envelope.attempt)
            for d in self.deliveries
            if run_id is None or d.envelope.run_id == run_id
        ]

    async def Dispatch(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        if self.unavailable_times > 0:
            self.unavailable_times -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "coordinator test double is down")
        accepted = duplicates = 0
        for item in request.deliveries:
            key = (item.envelope.run_id, item.envelope.node_id, item.envelope.attempt)
            if key in self._seen:
                duplicates += 1
            else:
                self._seen.add(key)
                accepted += 1
        async with self.changed:
            self.requests.append(request)
            self.changed.notify_all()
        return coordinator_pb2.DispatchResponse(accepted=accepted, duplicates=duplicates)

    async def wait_for(self, predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: predicate(self)), timeout)


class RecordingResultStore(result_store_pb2_grpc.ResultStoreServicer):
    def __init__(self) -> None:
        self.graphs: dict[str, workflow_pb2.WorkflowSpec] = {}
        self.put_calls = 0
        self.get_calls = 0
        # Run ids of every KeepRunsAlive call, in order.
        self.kept_alive: list[list[str]] = []

    async def KeepRunsAlive(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        self.kept_alive.append(list(request.run_ids))
        return result_store_pb2.KeepRunsAliveResponse()

    async def PutGraph(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        self.put_calls += 1
        if graph_hash(request.spec) != request.graph_hash:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "graph hash does not match")
        created = request.graph_hash not in self.graphs
        self.graphs[request.graph_hash] = request.spec
        return result_store_pb2.PutGraphResponse(created=created)

    async def GetGraph(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        self.get_calls += 1
        found = self.graphs.get(request.graph_hash)
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"graph {request.graph_hash} not found")
        return result_store_pb2.GetGraphResponse(spec=found)


async def serve_downstreams(
    coordinator: RecordingCoordinator, result_store: RecordingResultStore
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(coordinator, server)
    result_store_pb2_grpc.add_ResultStoreServicer_to_server(result_store, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


class RunHarness:
    """Drives one run through RunStore directly (state tests without the consumer)."""

    def __init__(self, store: RunStore, plan: Plan, run_id: str) -> None:
        self.store = store
        self.plan = plan
        self.run_id = run_id

    @classmethod
    async def create(
        cls, store: RunStore, workflow: workflow_pb2.WorkflowSpec, **kwargs: object
    ) -> RunHarness:
        plan = compile_spec(workflow)
        created = await store.create_run(
            plan,
            run_id=new_run_id(),
            graph_hash=graph_hash(workflow),
            now_ms=1_000,
            **kwargs,  # type: ignore[arg-type]
        )
        return cls(store, plan, created.run_id)

    async def finish(
        self,
        node_id: str,
        attempt: int = 1,
        *,
        ok: bool = True,
        retry_delay_ms: int = -1,
        error: common_pb2.ErrorInfo | None = None,
        worker_lost: bool = False,
    ) -> AppliedOutcome:
        return await self.apply(
            node_id,
            attempt,
            ok=ok,
            error=error,
            retry_delay_ms=retry_delay_ms,
            closure_json=self.plan.closure_json(node_id, failed=not ok),
            worker_lost=worker_lost,
        )

    async def apply(
        self,
        node_id: str,
        attempt: int,
        *,
        ok: bool,
        closure_json: str,
        error: common_pb2.ErrorInfo | None = None,
        retry_delay_ms: int = -1,
        worker_lost: bool = False,
        flow_json: str = "",
    ) -> AppliedOutcome:
        """Apply one outcome of worker "w1" (a failure without ``error``: a retryable ValueError)."""
        info = error or common_pb2.ErrorInfo(type="ValueError", message=f"{node_id} broke")
        (result,) = await self.store.apply_outcomes(
            [
                OutcomeToApply(
                    run_id=self.run_id,
                    node_id=node_id,
                    attempt=attempt,
                    succeeded=ok,
                    error=b"" if ok else info.SerializeToString(),
                    worker_id="w1",
                    retry_delay_ms=retry_delay_ms,
                    closure_json=closure_json,
                    worker_lost=worker_lost,
                    flow_json=flow_json,
                )
            ],
            now_ms=2_000,
        )
        return result

    async def states(self) -> dict[str, str]:
        raw = await self.store.redis.hgetall(keys.run_state(self.run_id))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def meta(self) -> dict[str, bytes]:
        raw = await self.store.redis.hgetall(keys.run_meta(self.run_id))
        return {k.decode(): v for k, v in raw.items()}

    async def status(self) -> str:
        return (await self.meta())["status"].decode()

    async def events(self) -> list[tuple[str, str]]:
        """(type, node) of every event, in order."""
        entries = await self.store.redis.xrange(keys.run_events(self.run_id))
        return [(f[b"t"].decode(), f.get(b"n", b"").decode()) for _, f in entries]
