"""Nodes added at run time by ``ctx.next_task``: how they are stored and found again.

``apply_outcome`` stores each one in the run's ``gf:run:{R}:dyn`` hash (node id -> JSON
``{"parent", "cont", "spec"}``, ``spec`` being the base64 ``NodeSpec`` bytes without its id).
``parent`` added it (its result is the node's input); ``cont`` is the workflow node whose static
successors wait for it ("" when it was added with ``goto``: nothing waits for it). Fields starting
with ``#`` are bookkeeping of the Lua script (see flow.lua), never node ids (ids can't hold ``#``).

The plans cover only the submitted graph; :class:`DynamicNodes` completes them per run, from an
in-process LRU filled when this process added the node, else from Redis.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog
from google.protobuf.message import DecodeError

from graflow_api.v1 import workflow_pb2
from graflow_runtime import keys

from graflow_scheduler.compiler import task_data
from graflow_scheduler.errors import SpecError
from graflow_scheduler.plan import NodeKind, Plan, TaskData

log = structlog.get_logger(__name__)

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


class DynamicNodes:
    """Dynamic nodes by (run id, node id): an LRU in front of the runs' ``dyn`` hashes."""

    def __init__(self, redis: aioredis.Redis, *, capacity: int = 100_000) -> None:
        self._redis = redis
        self._capacity = capacity
        self._nodes: OrderedDict[tuple[str, str], DynamicNode] = OrderedDict()

    def remember(self, run_id: str, node: DynamicNode) -> None:
        self._nodes[(run_id, node.node_id)] = node
        self._nodes.move_to_end((run_id, node.node_id))
        while len(self._nodes) > self._capacity:
            self._nodes.popitem(last=False)

    def cached(self, run_id: str, node_id: str) -> DynamicNode | None:
        return self._nodes.get((run_id, node_id))

    async def load(self, run_id: str, node_ids: Iterable[str], plan: Plan) -> dict[str, DynamicNode]:
        """The dynamic nodes among ``node_ids`` (unknown ids, and static ones, are left out)."""
        found: dict[str, DynamicNode] = {}
        missing: list[str] = []
        for node_id in dict.fromkeys(node_ids):
            if node_id in plan.nodes:
                continue
            node = self.cached(run_id, node_id)
            if node is None:
                missing.append(node_id)
            else:
                found[node_id] = node
        if missing:
            values = await self._redis.hmget(keys.run_dynamic(run_id), missing)
            for node_id, raw in zip(missing, values, strict=True):
                if raw is None:
                    continue
                try:
                    node = decode(node_id, raw, plan)
                except ValueError as exc:
                    log.error("dynamic node unusable", run_id=run_id, node_id=node_id, error=str(exc))
                    continue
                self.remember(run_id, node)
                found[node_id] = node
        return found


def task_of(plan: Plan, dynamic: Mapping[str, DynamicNode], node_id: str) -> TaskData | None:
    """What the envelope of ``node_id`` carries: from the plan, else from its dynamic node."""
    node = plan.nodes.get(node_id)
    if node is not None:
        return node.task if node.kind is NodeKind.TASK else None
    found = dynamic.get(node_id)
    return found.task if found is not None else None
