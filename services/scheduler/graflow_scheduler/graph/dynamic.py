"""Nodes added at run time by ``ctx.next_task``: the form they are stored in, and their task data.

``apply_outcome`` stores each one in the run's ``gf:run:{R}:dyn`` hash (node id -> JSON
``{"parent", "cont", "spec"}``, ``spec`` being the base64 ``NodeSpec`` bytes without its id).
``parent`` added it (its result is the node's input); ``cont`` is the workflow node whose static
successors wait for it ("" when it was added with ``goto``: nothing waits for it). Fields starting
with ``#`` are bookkeeping of the Lua script (see flow.lua), never node ids (ids can't hold ``#``).

The plans cover only the submitted graph; ``graflow_scheduler.state.dynamic_nodes`` completes
them per run, from an in-process LRU filled when this process added the node, else from Redis.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from graflow_api.v1 import workflow_pb2

from graflow_scheduler.errors import SpecError
from graflow_scheduler.graph.compiler import task_data
from graflow_scheduler.graph.plan import NodeKind, Plan, TaskData

BOOKKEEPING_PREFIX = "#"


@dataclass(frozen=True, slots=True)
class DynamicNode:
    node_id: str
    # The node that added it.
    parent: str
    # The workflow node whose static successors wait for it ("" = none).
    cont: str
    spec: workflow_pb2.NodeSpec
    task: TaskData


def encode(parent: str, cont: str, spec: workflow_pb2.NodeSpec) -> str:
    """The hash value of a dynamic node (``spec`` without its id)."""
    stored = workflow_pb2.NodeSpec()
    stored.CopyFrom(spec)
    stored.id = ""
    data = base64.b64encode(stored.SerializeToString(deterministic=True)).decode()
    return json.dumps({"parent": parent, "cont": cont, "spec": data}, separators=(",", ":"))


def decode(node_id: str, raw: bytes | str, plan: Plan) -> DynamicNode:
    """Raises ValueError when the stored value is unusable."""
    try:
        value = json.loads(raw)
        spec = workflow_pb2.NodeSpec.FromString(base64.b64decode(value["spec"], validate=True))
        parent, cont = str(value["parent"]), str(value["cont"])
    except (ValueError, KeyError, TypeError, binascii.Error, DecodeError) as exc:
        raise ValueError(f"dynamic node {node_id!r} is stored in an unreadable form: {exc}") from exc
    spec.id = node_id
    if cont and cont not in plan.nodes:
        raise ValueError(f"dynamic node {node_id!r} continues {cont!r}, which is not a node of the workflow")
    try:
        task = task_data(spec, None, plan.defaults, (parent,))
    except SpecError as exc:
        raise ValueError(f"dynamic node {node_id!r}: {exc}") from exc
    return DynamicNode(node_id=node_id, parent=parent, cont=cont, spec=spec, task=task)


def summaries(raw: Mapping[bytes, bytes]) -> dict[str, tuple[str, str]]:
    """node id -> (task type, parent) of the dynamic nodes in an HGETALL of the hash, in its order."""
    out: dict[str, tuple[str, str]] = {}
    for field, value in raw.items():
        node_id = field.decode()
        if node_id.startswith(BOOKKEEPING_PREFIX):
            continue
        try:
            parsed = json.loads(value)
            spec = workflow_pb2.NodeSpec.FromString(base64.b64decode(parsed["spec"]))
            out[node_id] = (spec.task_type, str(parsed["parent"]))
        except (ValueError, KeyError, TypeError, binascii.Error, DecodeError):
            out[node_id] = ("", "")
    return out


def task_of(plan: Plan, dynamic: Mapping[str, DynamicNode], node_id: str) -> TaskData | None:
    """What the envelope of ``node_id`` carries: from the plan, else from its dynamic node."""
    node = plan.nodes.get(node_id)
    if node is not None:
        return node.task if node.kind is NodeKind.TASK else None
    found = dynamic.get(node_id)
    return found.task if found is not None else None
