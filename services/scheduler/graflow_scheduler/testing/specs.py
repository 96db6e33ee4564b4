"""Builders of workflow specs and task outcomes for the scheduler's tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from graflow_api.v1 import common_pb2, messages_pb2, workflow_pb2


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
