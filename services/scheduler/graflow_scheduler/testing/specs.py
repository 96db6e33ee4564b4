"""Builders of workflow specs and task outcomes for the scheduler's tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pytest

from graflow_api.v1 import common_pb2, feedback_pb2, messages_pb2, result_store_pb2, workflow_pb2

from graflow_scheduler.graph.compiler import Limits, SpecError, compile_spec


def rejects(workflow: workflow_pb2.WorkflowSpec, *fragments: str, limits: Limits | None = None) -> str:
    """The message of the :class:`SpecError` that compiling ``workflow`` raises, after asserting
    that it holds every one of ``fragments``."""
    with pytest.raises(SpecError) as info:
        compile_spec(workflow, limits or Limits())
    for fragment in fragments:
        assert fragment in str(info.value)
    return str(info.value)


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
    value: bytes | None = None,
) -> messages_pb2.TaskOutcome:
    """A worker's outcome; ``value`` (JSON bytes): a success's result carried inline, as workers
    send results up to their INLINE_RESULT_MAX_BYTES."""
    result = messages_pb2.TaskOutcome(
        run_id=run_id,
        node_id=node_id,
        attempt=attempt,
        status=messages_pb2.TaskOutcome.STATUS_SUCCEEDED if ok else messages_pb2.TaskOutcome.STATUS_FAILED,
        worker_id=worker,
    )
    if value is not None:
        result.has_result = True
        result.result.CopyFrom(result_store_pb2.NodeResult(
            run_id=run_id, node_id=node_id, attempt=attempt, worker_id=worker, task_type=f"t_{node_id}",
            value=common_pb2.Payload(content_type="application/json", data=value)))
    if not ok:
        result.error.CopyFrom(
            common_pb2.ErrorInfo(type=error_type, message=f"{node_id} broke", retryable=retryable)
        )
    return result


def question(
    request_id: str = "a.0.1",
    kind: int = feedback_pb2.FEEDBACK_KIND_APPROVAL,
    prompt: str = "ship it?",
    **fields: object,
) -> feedback_pb2.FeedbackRequest:
    """A feedback request as a task sends it."""
    return feedback_pb2.FeedbackRequest(request_id=request_id, kind=kind, prompt=prompt, **fields)  # type: ignore[arg-type]


def waiting(
    run_id: str,
    node_id: str = "a",
    attempt: int = 1,
    request: feedback_pb2.FeedbackRequest | None = None,
    child_run_id: str = "",
) -> messages_pb2.TaskOutcome:
    """A worker's WAITING outcome: on ``request`` (default :func:`question`), or on a child run."""
    wait = (
        messages_pb2.Wait(child_run_id=child_run_id)
        if child_run_id
        else messages_pb2.Wait(feedback=request or question())
    )
    return messages_pb2.TaskOutcome(
        run_id=run_id,
        node_id=node_id,
        attempt=attempt,
        status=messages_pb2.TaskOutcome.STATUS_WAITING,
        worker_id="w1",
        wait=wait,
    )
