"""Conversions from the Redis representation of a run to the API messages (``Run``,
``NodeStatus``, ``RunEvent``)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from graflow_api.v1 import common_pb2, scheduler_pb2

from graflow_scheduler.graph.plan import Plan

Fields = Mapping[bytes, bytes]

TERMINAL_EVENT_TYPES = frozenset(
    {
        scheduler_pb2.RunEvent.TYPE_RUN_SUCCEEDED,
        scheduler_pb2.RunEvent.TYPE_RUN_FAILED,
        scheduler_pb2.RunEvent.TYPE_RUN_CANCELED,
    }
)
ENDED_STATUSES = frozenset({"SUCCEEDED", "FAILED", "CANCELED"})
# Statuses of a run that has not ended (PAUSED: it has WAITING nodes and nothing READY).
LIVE_STATUSES = ("RUNNING", "PAUSED")


def _text(fields: Fields, name: bytes, default: str = "") -> str:
    value = fields.get(name)
    return value.decode() if value is not None else default


def _int(fields: Fields, name: bytes) -> int:
    value = fields.get(name)
    return int(value) if value else 0


def _enum(enum: object, prefix: str, name: str) -> int:
    try:
        return enum.Value(prefix + name)  # type: ignore[attr-defined]
    except ValueError:
        return 0


def run_status_name(meta: Fields) -> str:
    return _text(meta, b"status")


def run_from_meta(run_id: str, meta: Fields) -> scheduler_pb2.Run:
    """The run without its node list (as ListRuns returns it)."""
    run = scheduler_pb2.Run(
        run_id=run_id,
        workflow_name=_text(meta, b"name"),
        status=_enum(common_pb2.RunStatus, "RUN_STATUS_", _text(meta, b"status")),
        graph_hash=_text(meta, b"graph"),
        created_at_ms=_int(meta, b"created"),
        updated_at_ms=_int(meta, b"updated"),
        ended_at_ms=_int(meta, b"ended"),
        failed_node_id=_text(meta, b"failed_node"),
        sink_node_ids=json.loads(_text(meta, b"sinks", "[]")),
        labels=json.loads(_text(meta, b"labels", "{}")),
        message=_text(meta, b"message"),
        skipped_deliveries=_int(meta, b"skipped"),
        canceled_attempts=_int(meta, b"stopped"),
    )
    if meta.get(b"parent"):
        run.parent.run_id = _text(meta, b"parent")
        run.parent.node_id = _text(meta, b"parent_node")
    error = meta.get(b"error")
    if error:
        run.error.ParseFromString(error)
    return run


def add_nodes(
    run: scheduler_pb2.Run,
    states: Fields,
    attempts: Fields,
    errors: Fields,
    plan: Plan | None,
    cycles: Fields | None = None,
    dynamic: Mapping[str, tuple[str, str]] | None = None,
) -> None:
    """Append a NodeStatus per node: plan order when the plan is known, then the nodes added at
    run time (``dynamic``: node -> (task type, the node that added it)) in the order they came."""
    decoded = {k.decode(): v.decode() for k, v in states.items()}
    dynamic = dynamic or {}
    if plan is not None:
        order = [n for n in plan.nodes if n in decoded]
        order += [n for n in dynamic if n in decoded and n not in plan.nodes]
        order += sorted(n for n in decoded if n not in plan.nodes and n not in dynamic)
    else:
        order = sorted(decoded)
    for node_id in order:
        key = node_id.encode()
        status = run.nodes.add(
            node_id=node_id,
            state=_enum(common_pb2.NodeState, "NODE_STATE_", decoded[node_id]),
            attempt=_int(attempts, key),
            cycle=_int(cycles or {}, key),
        )
        if errors.get(key):
            status.error.ParseFromString(errors[key])
        plan_node = plan.nodes.get(node_id) if plan is not None else None
        if plan_node is not None:
            status.kind = plan_node.kind.value
            if plan_node.task is not None:
                status.task_type = plan_node.task.task_type
        elif node_id in dynamic:
            status.kind = "task"
            status.task_type, status.added_by = dynamic[node_id]


def event_from_entry(run_id: str, entry_id: bytes, fields: Fields) -> scheduler_pb2.RunEvent:
    event = scheduler_pb2.RunEvent(
        cursor=entry_id.decode(),
        type=_enum(scheduler_pb2.RunEvent.Type, "TYPE_", _text(fields, b"t")),
        run_id=run_id,
        node_id=_text(fields, b"n"),
        attempt=_int(fields, b"a"),
        at_ms=_int(fields, b"ts"),
        message=_text(fields, b"m"),
        worker_id=_text(fields, b"w"),
    )
    if fields.get(b"err"):
        event.error.ParseFromString(fields[b"err"])
    return event


def is_terminal(event: scheduler_pb2.RunEvent) -> bool:
    return event.type in TERMINAL_EVENT_TYPES


# Event type as stored (b"NODE_READY") -> RunEvent.Type, for filtering without building events.
_EVENT_TYPES = {
    name.removeprefix("TYPE_").encode(): number
    for name, number in scheduler_pb2.RunEvent.Type.items()
    if name != "TYPE_UNSPECIFIED"
}


def event_type(fields: Fields) -> int:
    """The ``RunEvent.Type`` of an event entry, without building the event."""
    return _EVENT_TYPES.get(fields.get(b"t", b""), 0)


def is_terminal_entry(fields: Fields) -> bool:
    return event_type(fields) in TERMINAL_EVENT_TYPES
