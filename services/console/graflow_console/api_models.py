"""The JSON HTTP API's bodies, as pydantic models, and their conversion from the contract's messages.

The models are what ``/api/openapi.json`` publishes: every field is typed and described here rather
than left as ``dict``, so a client generated from the document gets real types. They follow the gRPC
contract field by field (same names, so the proto comments stay the reference) with three changes
that make them JSON: enums by their short name (``SUCCEEDED``, not ``RUN_STATUS_SUCCEEDED``),
``*_json`` bytes as the JSON value they hold (``metadata``, ``default_arguments``, ``custom``), and
unset sub-messages as ``null`` instead of an empty object. Conversion goes through
:func:`graflow.cli.output.message_data`, the CLI's ``-o json`` form, so both speak the same JSON.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

from google.protobuf.message import Message
from pydantic import BaseModel, Field

from graflow import payload
from graflow.cli.output import message_data
from graflow_api.v1 import common_pb2, feedback_pb2, result_store_pb2, scheduler_pb2


class ErrorDetail(BaseModel):
    code: str = Field(description="The gRPC status name of the refusal (PERMISSION_DENIED, NOT_FOUND, ...).")
    message: str = Field(description="What went wrong, as the service said it: what to change.")


class ErrorBody(BaseModel):
    """The body of every answer that is not a 2xx."""

    error: ErrorDetail


class ErrorInfo(BaseModel):
    type: str = Field(description="Exception class name or Graflow error code.")
    message: str
    traceback: str = ""
    retryable: bool = False


class ParentRef(BaseModel):
    run_id: str
    node_id: str


class NodeStatus(BaseModel):
    node_id: str
    state: str = Field(description="PENDING, READY, SUCCEEDED, FAILED, SKIPPED, WAITING or CANCELED.")
    attempt: int
    error: ErrorInfo | None = None
    kind: str = Field(description='"task" or "group".')
    task_type: str
    cycle: int
    added_by: str = Field(description="The node that added this one at run time (empty otherwise).")
    waiting_for: str = Field(description='A feedback request id or "child:<run id>" for a WAITING node.')


class Run(BaseModel):
    run_id: str
    workflow_name: str
    status: str = Field(description="RUNNING, SUCCEEDED, FAILED, CANCELED or PAUSED.")
    graph_hash: str
    created_at_ms: int
    updated_at_ms: int
    ended_at_ms: int = Field(description="0 while the run goes on.")
    error: ErrorInfo | None = None
    failed_node_id: str
    nodes: list[NodeStatus] = Field(description="Empty in lists; the run's nodes in GET of one run.")
    sink_node_ids: list[str]
    labels: dict[str, str]
    message: str
    parent: ParentRef | None = None
    child_run_ids: list[str]
    skipped_deliveries: int
    canceled_attempts: int
    url: str = Field(description="The run's page in the console.")
    results: dict[str, Any] | None = Field(
        None,
        description="GET of one SUCCEEDED run: its sinks' results by node id (JSON values; a value "
        'of another content type as {"content_type", "base64"}). null otherwise.',
    )


class RunList(BaseModel):
    runs: list[Run]
    next_page_token: str = Field(
        description="Pass as page_token for the next page; empty when there are no more. A page may "
        "hold fewer runs than the limit (even none) while this is set."
    )


class CancelBody(BaseModel):
    reason: str = Field("", description="Why, recorded with the run and in the audit log.")


class Workflow(BaseModel):
    name: str
    description: str
    default_arguments: dict[str, Any] = Field(
        description="Arguments a submission gets when it does not set them."
    )
    version: int
    updated_at_ms: int
    graph_hash: str


class WorkflowList(BaseModel):
    workflows: list[Workflow]


class SubmitBody(BaseModel):
    arguments: dict[str, Any] = Field(
        default_factory=dict,
        description="Merged over the workflow's default arguments; each member becomes a channel value.",
    )
    labels: dict[str, str] = Field(default_factory=dict)
    idempotency_key: str = Field("", description="The same key always answers with the same run.")


class Submitted(BaseModel):
    run_id: str
    created: bool = Field(description="False when the idempotency key matched an existing run.")
    url: str = Field(description="The run's page in the console.")


class FeedbackAnswer(BaseModel):
    approved: bool | None = None
    reason: str = ""
    text: str = ""
    selected: str = ""
    selected_multiple: list[str] = Field(default_factory=list)
    custom: Any = None
    responded_by: str = ""
    responded_at_ms: int = 0


class FeedbackRequest(BaseModel):
    request_id: str
    kind: str = Field(description="APPROVAL, TEXT, SELECTION, MULTI_SELECTION or CUSTOM.")
    prompt: str
    options: list[str]
    metadata: dict[str, Any] | None = None
    timeout_ms: int
    on_timeout: str
    run_id: str
    node_id: str
    attempt: int
    cycle: int
    created_at_ms: int
    deadline_ms: int = Field(description="0 = no deadline.")
    state: str = Field(description="PENDING, ANSWERED or CLOSED.")
    response: FeedbackAnswer | None = None
    url: str = Field(description="The request's page in the console, with its answer form.")


class FeedbackList(BaseModel):
    requests: list[FeedbackRequest]


class AnswerBody(BaseModel):
    """Set the field of the request's kind; the others are ignored by the scheduler."""

    approved: bool | None = Field(None, description="APPROVAL: true approves, false rejects.")
    reason: str = Field("", description="Optional, any kind.")
    text: str | None = Field(None, description="TEXT.")
    selected: str | None = Field(None, description="SELECTION: one of the options.")
    selected_multiple: list[str] | None = Field(
        None, description="MULTI_SELECTION: options, each at most once."
    )
    custom: Any = Field(None, description="CUSTOM: any JSON value (null included, when given).")


def _data(message: Message, optional: tuple[str, ...]) -> dict[str, Any]:
    """``message_data`` with the unset sub-messages among ``optional`` as None (proto3 gives an
    empty message for them, which a client would read as an error with no text)."""
    data = message_data(message)
    for name in optional:
        if not message.HasField(name):
            data[name] = None
    return data


def run_model(
    run: scheduler_pb2.Run, url: str, results: Iterable[result_store_pb2.NodeResult] | None = None
) -> Run:
    """A ``Run`` message (with or without its nodes), and the results of its sinks when given."""
    data = _data(run, ("error", "parent"))
    data["nodes"] = [_data(node, ("error",)) for node in run.nodes]
    values = None if results is None else {result.node_id: _value(result.value) for result in results}
    return Run.model_validate({**data, "url": url, "results": values})


def _value(value: common_pb2.Payload) -> Any:
    decoded = payload.decode(value)
    if isinstance(decoded, bytes):
        return {"content_type": value.content_type, "base64": base64.b64encode(decoded).decode()}
    return decoded


def workflow_model(workflow: scheduler_pb2.RegisteredWorkflow) -> Workflow:
    data = message_data(workflow)
    return Workflow.model_validate({**data, "default_arguments": data["default_arguments_json"] or {}})


def feedback_model(request: feedback_pb2.FeedbackRequest, url: str) -> FeedbackRequest:
    data = message_data(request)
    response = None
    if request.HasField("response"):
        answer = message_data(request.response)
        response = {
            **answer,
            "approved": request.response.approved if request.response.HasField("approved") else None,
            "custom": answer["custom_json"],
        }
    return FeedbackRequest.model_validate(
        {**data, "metadata": data["metadata_json"], "response": response, "url": url}
    )
