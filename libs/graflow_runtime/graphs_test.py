"""graph_hash, and the generated contracts being importable (Pants infers the protobuf_sources
dependency from ``graflow_api.v1.*_pb2`` / ``*_pb2_grpc`` imports and generates them at build time)."""

from __future__ import annotations

from graflow_api.v1 import coordinator_pb2, coordinator_pb2_grpc, workflow_pb2
from graflow_runtime.graphs import graph_hash


def _spec(*node_ids: str) -> workflow_pb2.WorkflowSpec:
    spec = workflow_pb2.WorkflowSpec(name="etl")
    for node_id in node_ids:
        spec.nodes.add(id=node_id, task_type=node_id)
    return spec


def test_graph_hash_is_stable_and_content_addressed() -> None:
    assert graph_hash(_spec("fetch", "clean")) == graph_hash(_spec("fetch", "clean"))
    assert graph_hash(_spec("fetch", "clean")) != graph_hash(_spec("clean", "fetch"))
    assert len(graph_hash(_spec("fetch"))) == 64


def test_generated_grpc_modules_import_with_their_dependencies() -> None:
    service = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"]
    assert service.full_name == "graflow_api.v1.Coordinator"
    assert hasattr(coordinator_pb2_grpc, "CoordinatorStub")
    assert hasattr(coordinator_pb2_grpc, "add_CoordinatorServicer_to_server")
