"""From a task outcome to what ``apply_outcome`` needs for dynamic control flow: the closure and
the flow argument (see flow.lua), with the outcome's directives validated and translated.

- The *continuation* of an outcome is the workflow node whose static successors it may release:
  the node itself, or for a node added at run time the node it continues ("" after a goto).
- A directive that can't be applied as given (bad node id, unknown task type spelling, arguments
  that are not a JSON object, a group as goto target, ...) fails the node with ``InvalidDirective``
  (not retryable); targets that are not nodes of the run are found by the script.
- Directives of a failed attempt are ignored (the worker sends none: a task that raises after a
  directive call drops it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from graflow_api.v1 import common_pb2, messages_pb2, workflow_pb2
from graflow_runtime import user_json
from graflow_runtime.limits import MAX_DIRECTIVES
from graflow_runtime.names import NODE_ID_RULE, is_node_id

from graflow_scheduler.errors import SpecError
from graflow_scheduler.graph import dynamic
from graflow_scheduler.graph.compiler import Limits, task_data
from graflow_scheduler.graph.dynamic import DynamicNode
from graflow_scheduler.graph.plan import NodeKind, Plan, TaskData

MESSAGE_MAX = 1024
_SUCCEEDED = messages_pb2.TaskOutcome.STATUS_SUCCEEDED


class InvalidDirective(ValueError):
    pass


@dataclass
class PreparedFlow:
    # The outcome's node: what its retries carry.
    task: TaskData
    # Continuation node ("" = none).
    cont: str
    flow_json: str
    # Set when a directive is invalid: the outcome is applied as this failure.
    error: common_pb2.ErrorInfo | None = None
    # Nodes the directives add, by directive index (their ids are known after applying).
    added: dict[int, DynamicNode] = field(default_factory=dict)
    _plan: Plan | None = None

    def closure_json(self, *, failed: bool) -> str:
        if not self.cont or self._plan is None:
            return "[]"
        return self._plan.closure_json(self.cont, failed=failed)


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def prepare(
    outcome: messages_pb2.TaskOutcome, plan: Plan, node: DynamicNode | None, limits: Limits
) -> PreparedFlow:
    """``node``: the outcome's node when it was added at run time (None: a workflow node)."""
    if node is None:
        task, cont = plan.task(outcome.node_id), outcome.node_id
        base: dict[str, object] | None = None
    else:
        task, cont = node.task, node.cont
        base = {"c": cont, "d": 1, "ms": plan.max_steps, "mc": node.task.max_cycles}
        if cont and plan.nodes[cont].loops:
            base["lp"] = plan.flow(cont)["lp"]
    prepared = PreparedFlow(task=task, cont=cont, flow_json="", _plan=plan)
    directives = list(outcome.directives) if outcome.status == _SUCCEEDED else []
    if directives:
        flow = dict(base) if base is not None else plan.flow(outcome.node_id)
        try:
            flow["dir"] = _translate(directives, outcome.node_id, cont, plan, limits, prepared.added)
        except InvalidDirective as exc:
            prepared.error = common_pb2.ErrorInfo(
                type="InvalidDirective", message=f"node {outcome.node_id!r}: {exc}", retryable=False
            )
            prepared.added.clear()
            flow.pop("dir", None)
        prepared.flow_json = _dumps(flow)
    else:
        prepared.flow_json = plan.flow_json(outcome.node_id) if base is None else _dumps(base)
    return prepared


def _translate(
    directives: list[messages_pb2.Directive],
    node_id: str,
    cont: str,
    plan: Plan,
    limits: Limits,
    added: dict[int, DynamicNode],
) -> list[dict[str, object]]:
    if len(directives) > MAX_DIRECTIVES:
        raise InvalidDirective(f"{len(directives)} directives in one attempt; the limit is {MAX_DIRECTIVES}")
    out: list[dict[str, object]] = []
    for index, directive in enumerate(directives):
        kind = directive.WhichOneof("kind")
        if kind == "next_task":
            out.append(_next_task(directive.next_task, index, node_id, cont, plan, limits, added))
        elif kind == "goto":
            out.append(_goto(directive.goto.node_id, plan, "goto"))
        elif kind == "next_iteration":
            out.append({"k": "iter", "d": _data(directive.next_iteration.data_json, limits)})
        elif kind == "terminate":
            out.append({"k": "term", "m": directive.terminate.message[:MESSAGE_MAX]})
        elif kind == "cancel":
            out.append({"k": "cancel", "m": directive.cancel.message[:MESSAGE_MAX]})
        else:
            raise InvalidDirective(f"directive #{index} is empty or of a kind this scheduler does not know")
    return out


def _check_id(node_id: str, what: str) -> None:
    if not is_node_id(node_id):
        raise InvalidDirective(f"{what} {node_id!r} is not a valid node id: {NODE_ID_RULE}")


def _goto(target: str, plan: Plan, what: str) -> dict[str, object]:
    if not target:
        raise InvalidDirective(f"{what} names no node")
    _check_id(target, f"{what} target")
    entry: dict[str, object] = {"k": "goto", "t": target}
    static = plan.nodes.get(target)
    if static is not None:
        if static.kind is not NodeKind.TASK:
            raise InvalidDirective(f"{what} target {target!r} is a parallel group; jump to a task node")
        entry["mc"] = plan.task(target).max_cycles
    return entry


def _next_task(
    request: messages_pb2.NextTask,
    index: int,
    node_id: str,
    cont: str,
    plan: Plan,
    limits: Limits,
    added: dict[int, DynamicNode],
) -> dict[str, object]:
    if request.node_id:
        _check_id(request.node_id, "next_task node id")
        if request.node_id in plan.nodes:
            return _goto(request.node_id, plan, "next_task")
    spec = workflow_pb2.NodeSpec()
    if request.HasField("options"):
        spec.CopyFrom(request.options)
    spec.id = request.node_id or f"{node_id}.next.<n>"
    spec.task_type = request.task_type
    spec.args_json = request.args_json
    try:
        task = task_data(spec, limits, plan.defaults, (node_id,))
    except SpecError as exc:
        raise InvalidDirective(f"next_task: {exc}") from exc
    child_cont = "" if request.goto else cont
    added[index] = DynamicNode(node_id=request.node_id, parent=node_id, cont=child_cont, spec=spec, task=task)
    return {
        "k": "add",
        "i": request.node_id,
        "t": request.task_type,
        "g": 1 if request.goto else 0,
        "mc": task.max_cycles,
        "v": dynamic.encode(node_id, child_cont, spec),
    }


def _data(raw: bytes, limits: Limits) -> str:
    if not raw:
        return ""
    if len(raw) > limits.max_args_bytes:
        raise InvalidDirective(
            f"next_iteration data is {len(raw)} bytes; the limit is {limits.max_args_bytes}"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidDirective(f"next_iteration data is not UTF-8: {exc}") from exc
    try:
        user_json.loads(text)
    except user_json.UserJsonError as exc:
        raise InvalidDirective(f"next_iteration data is {exc}") from exc
    return text
