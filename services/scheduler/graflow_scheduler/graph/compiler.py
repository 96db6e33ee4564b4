"""Validate a :class:`WorkflowSpec` and compile it into a :class:`~graflow_scheduler.graph.plan.Plan`.

Every rule a submitted workflow must follow is checked here, before anything is stored; a
violation raises :class:`SpecError` whose message names the offending id or field (it becomes the
INVALID_ARGUMENT detail of ``SubmitRun``). Pure Python, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from graflow_api.v1 import common_pb2, workflow_pb2
from graflow_runtime import limits as lim
from graflow_runtime import user_json
from graflow_runtime.limits import DEFAULT_BACKOFF_FACTOR
from graflow_runtime.names import (
    DEFAULT_QUEUE,
    NODE_ID_RULE,
    QUEUE_NAME_RULE,
    TASK_TYPE_RULE,
    is_node_id,
    is_queue_name,
    is_task_type,
)

from graflow_scheduler.errors import SpecError
from graflow_scheduler.graph.edges import Edges, build_edges, find_cycle, loop_body, loop_edges
from graflow_scheduler.graph.plan import (
    DEFAULT_MAX_CYCLES,
    DEFAULT_MAX_STEPS,
    JoinPolicy,
    LoopEdge,
    NodeDefaults,
    NodeKind,
    Plan,
    PlanNode,
    RetryConfig,
    TaskData,
)

NAME_MAX = 256

__all__ = ["Limits", "SpecError", "compile_spec", "task_data"]

_GROUP_POLICIES = {
    workflow_pb2.GroupPolicy.KIND_UNSPECIFIED: JoinPolicy.STRICT,
    workflow_pb2.GroupPolicy.KIND_STRICT: JoinPolicy.STRICT,
    workflow_pb2.GroupPolicy.KIND_BEST_EFFORT: JoinPolicy.BEST_EFFORT,
    workflow_pb2.GroupPolicy.KIND_AT_LEAST_N: JoinPolicy.AT_LEAST_N,
    workflow_pb2.GroupPolicy.KIND_CRITICAL: JoinPolicy.CRITICAL,
}


@dataclass(frozen=True)
class Limits:
    """The size limits of a submitted workflow (the scheduler's settings set the first two)."""

    max_nodes: int = 100_000
    max_args_bytes: int = 1024 * 1024
    max_edges: int = lim.MAX_EDGES
    max_group_members: int = lim.MAX_GROUP_MEMBERS


def _short(ids: list[str] | tuple[str, ...], limit: int = 10) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def compile_spec(spec: workflow_pb2.WorkflowSpec, limits: Limits | None = None) -> Plan:
    """Validate ``spec`` and return its plan. ``limits=None`` skips the size limits (for graphs
    that were accepted before, read back from the result-store)."""
    if not spec.nodes:
        raise SpecError("workflow has no nodes: add at least one task node")
    if limits is not None and len(spec.nodes) + len(spec.groups) > limits.max_nodes:
        raise SpecError(
            f"workflow has {len(spec.nodes) + len(spec.groups)} nodes and groups; "
            f"the limit is {limits.max_nodes}"
        )
    if len(spec.name) > NAME_MAX:
        raise SpecError(f"workflow name is {len(spec.name)} characters long; the limit is {NAME_MAX}")
    if limits is not None:
        _check_sizes(spec, limits)
    _check_ids(spec)
    default_queue = _check_queue(spec.defaults.queue, "defaults.queue") or DEFAULT_QUEUE
    default_retry = (
        _retry(spec.defaults.retry, "defaults.retry") if spec.defaults.HasField("retry") else RetryConfig()
    )
    if limits is not None:
        _check_values(
            "defaults.",
            timeout_ms=spec.defaults.timeout_ms,
            max_cycles=spec.defaults.max_cycles,
            max_steps=spec.defaults.max_steps,
        )
    task_ids = [node.id for node in spec.nodes]
    members = _check_groups(spec, set(task_ids))
    _check_expansion(spec, members)
    edges = build_edges(spec, task_ids, members)
    cycle = find_cycle(edges)
    if cycle:
        raise SpecError(
            f"workflow has a cycle: {' -> '.join(cycle)}; to run it as a loop, mark the edge that "
            "closes it as a loop edge (EdgeSpec.loop)"
        )
    loops = loop_edges(spec, edges, set(task_ids))
    defaults = NodeDefaults(
        queue=default_queue,
        retry=default_retry,
        timeout_ms=spec.defaults.timeout_ms,
        max_cycles=spec.defaults.max_cycles or DEFAULT_MAX_CYCLES,
    )
    return _assemble(spec, limits, edges, members, defaults, loops)


def _check_sizes(spec: workflow_pb2.WorkflowSpec, limits: Limits) -> None:
    """Counts that bound what the rest of the compiler walks, checked before any of it."""
    if len(spec.edges) > limits.max_edges:
        raise SpecError(f"workflow has {len(spec.edges):,} edges; the limit is {limits.max_edges:,}")
    member_count = sum(len(group.member_ids) for group in spec.groups)
    if member_count > limits.max_group_members:
        raise SpecError(
            f"workflow has {member_count:,} group members (all groups together); "
            f"the limit is {limits.max_group_members:,}"
        )


def _check_expansion(spec: workflow_pb2.WorkflowSpec, members: dict[str, tuple[str, ...]]) -> None:
    """Refuse a workflow whose group edges would expand into more than MAX_EXPANDED_EDGES, counted
    before anything is built: an edge into a group becomes one edge per member, each carrying the
    source's results (one input per member of a source group), and every member has its edge to
    its group. Always applied: it bounds the memory and time of compiling any graph."""
    expanded = sum(len(group_members) for group_members in members.values())
    for edge in spec.edges:
        if not edge.loop:
            expanded += len(members.get(edge.from_id, "x")) * len(members.get(edge.to_id, "x"))
    if expanded > lim.MAX_EXPANDED_EDGES:
        raise SpecError(
            f"workflow's edges expand to {expanded:,} edges between task nodes and groups (an edge into "
            "a group counts once per member, times the members of a source group); the limit "
            f"MAX_EXPANDED_EDGES is {lim.MAX_EXPANDED_EDGES:,}: put a task between large groups, or "
            "join many sources in a task before the group"
        )


def _check_values(where: str, **values: int) -> None:
    """Each of ``values`` (timeout_ms, max_cycles, max_steps, priority) within its limit."""
    bounds = {
        "timeout_ms": lim.MAX_TIMEOUT_MS,
        "max_cycles": lim.MAX_CYCLES,
        "max_steps": lim.MAX_STEPS,
        "priority": lim.MAX_PRIORITY,
    }
    for name, value in values.items():
        if abs(value) > bounds[name]:
            span = f"within +-{bounds[name]:,}" if name == "priority" else f"{bounds[name]:,}"
            raise SpecError(f"{where}{name} is {value}; the limit is {span}")


def _check_ids(spec: workflow_pb2.WorkflowSpec) -> None:
    seen: dict[str, str] = {}
    for kind, items in (("node", spec.nodes), ("group", spec.groups)):
        for item in items:
            if not is_node_id(item.id):
                raise SpecError(f"{kind} id {item.id!r} is invalid: {NODE_ID_RULE}")
            if item.id in seen:
                raise SpecError(f"duplicate id {item.id!r}: used by a {seen[item.id]} and a {kind}")
            seen[item.id] = kind
    for index, edge in enumerate(spec.edges):
        for end, value in (("from_id", edge.from_id), ("to_id", edge.to_id)):
            if value not in seen:
                raise SpecError(
                    f"edge #{index} {edge.from_id!r} -> {edge.to_id!r}: {end} {value!r} "
                    "names no node or group"
                )
        if edge.from_id == edge.to_id:
            raise SpecError(f"self edge on {edge.from_id!r}: a node cannot depend on itself")


def _check_groups(spec: workflow_pb2.WorkflowSpec, task_ids: set[str]) -> dict[str, tuple[str, ...]]:
    group_ids = {group.id for group in spec.groups}
    members: dict[str, tuple[str, ...]] = {}
    for group in spec.groups:
        if not group.member_ids:
            raise SpecError(f"group {group.id!r} has no members")
        seen: set[str] = set()
        for member in group.member_ids:
            if member in group_ids:
                raise SpecError(
                    f"group {group.id!r} lists group {member!r} as a member; members must be task nodes"
                )
            if member not in task_ids:
                raise SpecError(f"group {group.id!r} lists unknown member {member!r}")
            if member in seen:
                raise SpecError(f"group {group.id!r} lists member {member!r} twice")
            seen.add(member)
        policy = group.policy
        if policy.kind not in _GROUP_POLICIES:
            raise SpecError(f"group {group.id!r} has unknown policy kind {policy.kind}")
        if policy.kind == workflow_pb2.GroupPolicy.KIND_AT_LEAST_N and not (
            1 <= policy.min_success <= len(group.member_ids)
        ):
            raise SpecError(
                f"group {group.id!r}: at_least_n min_success is {policy.min_success}; "
                f"it must be between 1 and the number of members ({len(group.member_ids)})"
            )
        if policy.kind == workflow_pb2.GroupPolicy.KIND_CRITICAL:
            if not policy.critical_ids:
                raise SpecError(f"group {group.id!r}: critical policy needs at least one critical_ids entry")
            strangers = [c for c in policy.critical_ids if c not in seen]
            if strangers:
                raise SpecError(
                    f"group {group.id!r}: critical_ids {_short(strangers)} are not members of the group"
                )
        members[group.id] = tuple(group.member_ids)
    return members


def _check_queue(queue: str, where: str) -> str:
    if queue and not is_queue_name(queue):
        raise SpecError(f"{where} {queue!r} is invalid: {QUEUE_NAME_RULE}")
    return queue


def _retry(policy: common_pb2.RetryPolicy, where: str) -> RetryConfig:
    if policy.max_attempts > lim.MAX_ATTEMPTS:
        raise SpecError(f"{where}.max_attempts is {policy.max_attempts}; the limit is {lim.MAX_ATTEMPTS}")
    for field_name in ("initial_interval_ms", "max_interval_ms"):
        interval = getattr(policy, field_name)
        if interval > lim.MAX_RETRY_INTERVAL_MS:
            raise SpecError(
                f"{where}.{field_name} is {interval}; the limit is {lim.MAX_RETRY_INTERVAL_MS:,} (1 day)"
            )
    factor = policy.backoff_factor
    if factor != 0 and not (math.isfinite(factor) and factor >= 1.0):
        raise SpecError(
            f"{where}.backoff_factor is {factor}; "
            f"it must be >= 1 (or 0 for the default {DEFAULT_BACKOFF_FACTOR})"
        )
    if not (math.isfinite(policy.jitter) and 0.0 <= policy.jitter <= 1.0):
        raise SpecError(f"{where}.jitter is {policy.jitter}; it must be within [0, 1]")
    return RetryConfig(
        max_attempts=max(1, policy.max_attempts),
        initial_interval_ms=policy.initial_interval_ms,
        backoff_factor=factor or DEFAULT_BACKOFF_FACTOR,
        max_interval_ms=policy.max_interval_ms,
        jitter=policy.jitter,
    )


def _check_args(node: workflow_pb2.NodeSpec, limits: Limits | None) -> None:
    raw = node.args_json
    if limits is not None and len(raw) > limits.max_args_bytes:
        raise SpecError(
            f"node {node.id!r}: args_json is {len(raw)} bytes; the limit is {limits.max_args_bytes}"
        )
    if not raw:
        return
    try:
        value = user_json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"node {node.id!r}: args_json is not valid UTF-8 ({exc.reason} at byte {exc.start})"
        ) from exc
    except user_json.UserJsonError as exc:
        raise SpecError(f"node {node.id!r}: args_json is {exc}") from exc
    if not isinstance(value, dict):
        raise SpecError(f"node {node.id!r}: args_json must be a JSON object, got {type(value).__name__}")


def task_data(
    node: workflow_pb2.NodeSpec, limits: Limits | None, defaults: NodeDefaults, inputs: tuple[str, ...]
) -> TaskData:
    """What a task node's envelopes carry, validated (also for nodes added at run time)."""
    if not node.task_type:
        raise SpecError(f"node {node.id!r} has no task_type: name the registered task it runs")
    if not is_task_type(node.task_type):
        raise SpecError(f"node {node.id!r}: task_type {node.task_type!r} is invalid ({TASK_TYPE_RULE})")
    _check_args(node, limits)
    if limits is not None:
        where = f"node {node.id!r}: "
        _check_values(where, timeout_ms=node.timeout_ms, priority=node.priority, max_cycles=node.max_cycles)
    queue = _check_queue(node.queue, f"node {node.id!r}: queue") or defaults.queue
    retry = _retry(node.retry, f"node {node.id!r}: retry") if node.HasField("retry") else defaults.retry
    return TaskData(
        task_type=node.task_type,
        args_json=node.args_json,
        retry=retry,
        timeout_ms=node.timeout_ms or defaults.timeout_ms,
        queue=queue,
        priority=node.priority,
        input_node_ids=inputs,
        max_cycles=node.max_cycles or defaults.max_cycles,
    )


def _expand(node_id: str, members: dict[str, tuple[str, ...]], out: dict[str, None]) -> None:
    if node_id in members:
        for member in members[node_id]:
            _expand(member, members, out)
    else:
        out[node_id] = None


def _assemble(
    spec: workflow_pb2.WorkflowSpec,
    limits: Limits | None,
    edges: Edges,
    members: dict[str, tuple[str, ...]],
    defaults: NodeDefaults,
    loops: list[tuple[str, str]],
) -> Plan:
    nodes: dict[str, PlanNode] = {}
    for node in spec.nodes:
        inputs: dict[str, None] = {}
        for pred in edges.preds[node.id]:
            _expand(pred, members, inputs)
        nodes[node.id] = PlanNode(
            id=node.id,
            kind=NodeKind.TASK,
            preds=len(edges.preds[node.id]),
            successors=tuple(edges.succs[node.id]),
            policy=JoinPolicy.ALL,
            task=task_data(node, limits, defaults, tuple(inputs)),
        )
    for group in spec.groups:
        nodes[group.id] = PlanNode(
            id=group.id,
            kind=NodeKind.GROUP,
            preds=len(members[group.id]),
            successors=tuple(edges.succs[group.id]),
            policy=_GROUP_POLICIES[group.policy.kind],
            min_success=group.policy.min_success,
            critical_ids=frozenset(group.policy.critical_ids),
            members=members[group.id],
        )
    for tail, head in loops:
        nodes[tail] = replace(nodes[tail], loops=(*nodes[tail].loops, _loop(edges, nodes, tail, head)))
    roots = tuple(n.id for n in spec.nodes if nodes[n.id].preds == 0)
    sinks: dict[str, None] = {}
    for node_id, plan_node in nodes.items():
        if not plan_node.successors:
            _expand(node_id, members, sinks)
    return Plan(
        name=spec.name,
        nodes=nodes,
        roots=roots,
        sinks=tuple(sinks),
        max_steps=spec.defaults.max_steps or max(DEFAULT_MAX_STEPS, len(spec.nodes)),
        defaults=defaults,
    )


def _loop(edges: Edges, nodes: dict[str, PlanNode], tail: str, head: str) -> LoopEdge:
    body = loop_body(edges, tail, head)
    clear: list[str] = [f"{head}:defer", f"{head}:dfail"]
    for node_id in body:
        clear += [f"{node_id}:{field}" for field in ("ok", "fail", "cfail", "defer", "dfail")]
        clear += [f"{node_id}<{pred}" for pred in edges.preds[node_id]]
    head_task = nodes[head].task
    assert head_task is not None  # loop_edges checked that the head is a task
    return LoopEdge(head=head, body=body, clear=tuple(clear), head_max_cycles=head_task.max_cycles)
