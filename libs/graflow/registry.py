"""The workflow registry's calls of :class:`graflow.Client`: workflows registered under a name,
submitted by name (``Client.submit_registered``, the console, the HTTP API).

    client.register_workflow(nightly, defaults={"day": "mon"})
    run = client.submit_registered("nightly", arguments={"day": "tue"})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

from graflow import payload
from graflow._transport import Endpoint
from graflow.dsl import Workflow
from graflow.errors import WorkflowDefinitionError, WorkflowNotFoundError
from graflow_api.v1 import scheduler_pb2, workflow_pb2

RegisteredWorkflow = scheduler_pb2.RegisteredWorkflow
_NOT_FOUND = {grpc.StatusCode.NOT_FOUND: WorkflowNotFoundError}


def spec_of(workflow_or_spec: object, call: str) -> workflow_pb2.WorkflowSpec:
    if isinstance(workflow_or_spec, Workflow):
        return workflow_or_spec.spec()
    if isinstance(workflow_or_spec, workflow_pb2.WorkflowSpec):
        return workflow_or_spec
    raise TypeError(
        f"{call} takes a graflow Workflow or a WorkflowSpec, not {type(workflow_or_spec).__name__}"
    )



class WorkflowRegistryCalls:
    """Mixed into :class:`graflow.Client` (which sets ``_scheduler``)."""

    _scheduler: Endpoint

    def register_workflow(
        self,
        workflow_or_spec: Workflow | workflow_pb2.WorkflowSpec,
        *,
        name: str | None = None,
        description: str = "",
        defaults: Mapping[str, Any] | None = None,
    ) -> RegisteredWorkflow:
        """Register the workflow under ``name`` (default: its own name) with the ``defaults`` of
        its arguments, replacing a workflow registered under that name (its version goes up by
        one). An invalid one raises :class:`WorkflowDefinitionError`."""
        spec = spec_of(workflow_or_spec, "register_workflow()")
        request = scheduler_pb2.PutWorkflowRequest(
            name=name or spec.name,
            spec=spec,
            description=description,
            default_arguments_json=payload.dumps(dict(defaults)) if defaults else b"",
        )
        return self._scheduler.call(
            "PutWorkflow", request, {grpc.StatusCode.INVALID_ARGUMENT: WorkflowDefinitionError}
        )

    def get_workflow(self, name: str) -> RegisteredWorkflow:
        """Raises :class:`WorkflowNotFoundError`."""
        request = scheduler_pb2.GetWorkflowRequest(name=name)
        return self._scheduler.call("GetWorkflow", request, _NOT_FOUND)

    def list_workflows(self) -> list[RegisteredWorkflow]:
        """The registered workflows by name, without their specs' nodes, edges and groups."""
        return list(self._scheduler.call("ListWorkflows", scheduler_pb2.ListWorkflowsRequest()).workflows)

    def delete_workflow(self, name: str) -> None:
        """Raises :class:`WorkflowNotFoundError`."""
        request = scheduler_pb2.DeleteWorkflowRequest(name=name)
        self._scheduler.call("DeleteWorkflow", request, _NOT_FOUND)
