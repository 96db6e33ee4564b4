"""A recording test double of the result-store's gRPC API (graphs, keep-alive), the scheduler's one
downstream service, served by a real gRPC server on a free port (the scheduler talks to it over the
network as in production). The scheduler's dispatches go to the test's real Redis
(graflow_scheduler.testing.enqueued reads them back)."""

from __future__ import annotations

import grpc

from graflow_api.v1 import result_store_pb2, result_store_pb2_grpc, workflow_pb2
from graflow_runtime.graphs import graph_hash


class RecordingResultStore(result_store_pb2_grpc.ResultStoreServicer):
    def __init__(self) -> None:
        self.graphs: dict[str, workflow_pb2.WorkflowSpec] = {}
        self.put_calls = 0
        self.get_calls = 0
        # Run ids of every KeepRunsAlive call, in order.
        self.kept_alive: list[list[str]] = []
        # Graph hashes of every KeepRunsAlive call, in order.
        self.kept_graphs: list[list[str]] = []

    async def KeepRunsAlive(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        self.kept_alive.append(list(request.run_ids))
        self.kept_graphs.append(list(request.graph_hashes))
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


async def serve_result_store(result_store: RecordingResultStore) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    result_store_pb2_grpc.add_ResultStoreServicer_to_server(result_store, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port
