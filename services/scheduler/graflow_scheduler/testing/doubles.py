"""Recording test doubles of the scheduler's two downstream services' gRPC APIs, served by a
real gRPC server on a free port (the scheduler talks to them over the network as in production)."""

from __future__ import annotations

import asyncio

import grpc

from graflow_api.v1 import (
    coordinator_pb2,
    coordinator_pb2_grpc,
    result_store_pb2,
    result_store_pb2_grpc,
    workflow_pb2,
)
from graflow_runtime.graphs import graph_hash


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
