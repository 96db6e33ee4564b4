"""The scheduler's calls for the console (issue 11): the workflow registry (Put/Get/List/
DeleteWorkflow), a submit by registered name with arguments, and the live counts of runs.

Arguments of a run (SubmitRunRequest.arguments_json, merged over a registered workflow's defaults)
become the run's first channel values, written by create_run.lua with the run itself: a task reads
each as the parameter of its name (a parameter without a bound argument falls back to the channel,
graflow's worker) or through ``ctx.channel``, exactly as a value an earlier task wrote with
ChannelSet, because each is stored as the result-store stores one (a JSON Payload)."""

from __future__ import annotations

import json

import grpc

from graflow_api.v1 import common_pb2, scheduler_pb2, workflow_pb2
from graflow_runtime import user_json
from graflow_runtime.errors import InvalidRequest
from graflow_runtime.graphs import graph_hash
from graflow_runtime.limits import MAX_CHANNEL_KEYS
from graflow_runtime.names import NODE_ID_RULE, channel_key_problem, is_node_id

from graflow_scheduler.downstream.plan_cache import compile_off_loop
from graflow_scheduler.errors import SpecError
from graflow_scheduler.graph.compiler import Limits
from graflow_scheduler.state.reader import RunReader
from graflow_scheduler.state.workflows import WorkflowRegistry

# The JSON content type of a channel value (the result-store's and the SDK's graflow.payload.JSON).
JSON_CONTENT_TYPE = "application/json"
DESCRIPTION_MAX = 4096


def _json_object(raw: bytes, field: str, max_bytes: int) -> dict[str, object]:
    """``raw`` as a JSON object (empty = {}); InvalidRequest naming ``field`` otherwise."""
    if not raw:
        return {}
    if len(raw) > max_bytes:
        raise InvalidRequest(f"{field} is {len(raw):,} bytes; the limit is {max_bytes:,}")
    try:
        value = user_json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"{field} is not a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{field} must be a JSON object, not {type(value).__name__}")
    return value


def channel_values(arguments: dict[str, object]) -> dict[str, bytes]:
    """Each argument as the channel value the result-store would store for it (Payload bytes)."""
    if len(arguments) > MAX_CHANNEL_KEYS:
        raise InvalidRequest(
            f"{len(arguments):,} arguments; the limit is {MAX_CHANNEL_KEYS:,} (channel keys)"
        )
    values: dict[str, bytes] = {}
    for key, value in arguments.items():
        problem = channel_key_problem(key)
        if problem:
            raise InvalidRequest(f"argument {key[:64]!r}: {problem}")
        data = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        values[key] = common_pb2.Payload(content_type=JSON_CONTENT_TYPE, data=data).SerializeToString()
    return values


class WorkflowCalls:
    """Mixed into the SchedulerServicer (which sets these attributes)."""

    registry: WorkflowRegistry
    reader: RunReader
    limits: Limits

    async def submission(
        self, request: scheduler_pb2.SubmitRunRequest
    ) -> tuple[workflow_pb2.WorkflowSpec, dict[str, bytes]]:
        """The spec a submit runs (``spec``, or the registered ``workflow``'s) and its arguments as
        channel values. INVALID_ARGUMENT unless exactly one of the two is set."""
        if not request.HasField("spec") and not request.workflow:
            raise InvalidRequest("spec is missing: set spec, or workflow (a registered workflow's name)")
        if request.HasField("spec") and request.workflow:
            raise InvalidRequest("both spec and workflow are set: set one of them")
        arguments = _json_object(request.arguments_json, "arguments_json", self.limits.max_args_bytes)
        if not request.workflow:
            return request.spec, channel_values(arguments)
        registered = await self.registry.get(request.workflow)
        defaults = _json_object(registered.default_arguments_json, "default_arguments_json", 2**31)
        return registered.spec, channel_values({**defaults, **arguments})

    async def PutWorkflow(  # noqa: N802 - gRPC method name
        self, request: scheduler_pb2.PutWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.RegisteredWorkflow:
        _check_name(request.name)
        if not request.HasField("spec"):
            raise InvalidRequest("spec is missing: the workflow to register")
        if len(request.description) > DESCRIPTION_MAX:
            raise InvalidRequest(
                f"description is {len(request.description):,} characters long; "
                f"the limit is {DESCRIPTION_MAX:,}"
            )
        _json_object(request.default_arguments_json, "default_arguments_json", self.limits.max_args_bytes)
        spec = workflow_pb2.WorkflowSpec()
        spec.CopyFrom(request.spec)
        spec.name = request.name
        try:
            await compile_off_loop(spec, self.limits)
        except SpecError as exc:
            raise SpecError(f"invalid workflow: {exc}") from exc
        record = scheduler_pb2.RegisteredWorkflow(
            name=request.name,
            spec=spec,
            description=request.description,
            default_arguments_json=request.default_arguments_json,
            graph_hash=graph_hash(spec),
        )
        return await self.registry.put(record)

    async def GetWorkflow(  # noqa: N802
        self, request: scheduler_pb2.GetWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.RegisteredWorkflow:
        _check_name(request.name)
        return await self.registry.get(request.name)

    async def ListWorkflows(  # noqa: N802
        self, request: scheduler_pb2.ListWorkflowsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ListWorkflowsResponse:
        return scheduler_pb2.ListWorkflowsResponse(workflows=await self.registry.list())

    async def DeleteWorkflow(  # noqa: N802
        self, request: scheduler_pb2.DeleteWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.DeleteWorkflowResponse:
        _check_name(request.name)
        await self.registry.delete(request.name)
        return scheduler_pb2.DeleteWorkflowResponse()

    async def CountRuns(  # noqa: N802
        self, request: scheduler_pb2.CountRunsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.CountRunsResponse:
        by_status, total = await self.reader.count_runs()
        return scheduler_pb2.CountRunsResponse(
            counts=[
                scheduler_pb2.CountRunsResponse.StatusCount(
                    status=common_pb2.RunStatus.Value(f"RUN_STATUS_{status}"), count=count
                )
                for status, count in by_status.items()
                if count
            ],
            total=total,
        )


def _check_name(name: str) -> None:
    """A workflow name is a path segment of the console's and the API's URLs
    (``/workflows/<name>``): "." and ".." (any name made only of dots) would be resolved away by
    browsers and proxies, so they are refused with the other malformed names."""
    if not is_node_id(name):
        raise InvalidRequest(f"workflow name {name[:64]!r} is invalid: {NODE_ID_RULE}")
    if not name.strip("."):
        raise InvalidRequest(f"workflow name {name!r} is invalid: it must not be made only of dots")
