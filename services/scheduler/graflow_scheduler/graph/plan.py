"""The compiled, immutable form of a workflow that the scheduler runs (see "Graph model" in
docs/architecture.md).

A group is a join node that is never executed: its members have an edge to it, and an edge into a
group was fanned out to every member by the compiler. Each node knows how many predecessors it
joins over, its successors and its join policy; task nodes carry what goes into their envelopes.

The ``apply_outcome`` Lua script never sees the whole graph. For the node an outcome is about,
:meth:`Plan.closure_json` gives just what the script needs: the node's successors and, for group
successors, their own successors (recursively), with join sizes and policies; :meth:`Plan.flow_json`
its limits and the loop edges it closes (see flow.lua).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from graflow_runtime.limits import DEFAULT_BACKOFF_FACTOR, DEFAULT_MAX_CYCLES
from graflow_runtime.names import DEFAULT_QUEUE

# Groups up to this size carry their member ids in failure closures, so the script can name the
# failed and succeeded members in the run's error; larger groups are summarised by counts.
MEMBERS_NAMED_UP_TO = 64
DEFAULT_MAX_STEPS = 10_000


class NodeKind(str, Enum):
    TASK = "task"
    GROUP = "group"


class JoinPolicy(str, Enum):
    """How a node's join decides. Values are the spellings the Lua scripts use."""

    ALL = "all"  # tasks: every predecessor succeeded
    STRICT = "strict"
    BEST_EFFORT = "best_effort"
    AT_LEAST_N = "at_least_n"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """A resolved retry policy (node's own, else the run default, else no retries)."""

    max_attempts: int = 1
    initial_interval_ms: int = 0
    backoff_factor: float = DEFAULT_BACKOFF_FACTOR
    max_interval_ms: int = 0  # 0 = no bound
    jitter: float = 0.0


@dataclass(frozen=True, slots=True)
class TaskData:
    """What a task node's envelope carries besides run id and attempt."""

    task_type: str
    args_json: bytes
    retry: RetryConfig
    timeout_ms: int
    queue: str
    priority: int
    # Task predecessors, with group predecessors expanded to their members.
    input_node_ids: tuple[str, ...]
    # Re-runs allowed (node's own, else the run default, else 100).
    max_cycles: int = DEFAULT_MAX_CYCLES


@dataclass(frozen=True, slots=True)
class LoopEdge:
    """A loop edge ``tail -> head`` (``EdgeSpec.loop``): each success of the tail resets the
    loop's nodes and runs the head again as a new cycle."""

    head: str
    # Nodes on the paths head -> tail (tail included, head excluded): back to PENDING.
    body: tuple[str, ...]
    # Join hash fields cleared: counters and counted predecessors of the body, deferrals.
    clear: tuple[str, ...]
    head_max_cycles: int


@dataclass(frozen=True, slots=True)
class NodeDefaults:
    """What nodes added at run time (ctx.next_task) get when they set nothing themselves."""

    queue: str = DEFAULT_QUEUE
    retry: RetryConfig = field(default_factory=RetryConfig)
    timeout_ms: int = 0
    max_cycles: int = DEFAULT_MAX_CYCLES


@dataclass(frozen=True, slots=True)
class PlanNode:
    id: str
    kind: NodeKind
    # Join size: predecessors of a task, members of a group.
    preds: int
    successors: tuple[str, ...]
    policy: JoinPolicy
    min_success: int = 0
    critical_ids: frozenset[str] = frozenset()
    members: tuple[str, ...] = ()
    task: TaskData | None = None
    # Loop edges from this task node.
    loops: tuple[LoopEdge, ...] = ()


@dataclass(frozen=True)
class Plan:
    name: str
    # Nodes in spec order: task nodes first, then groups.
    nodes: Mapping[str, PlanNode]
    roots: tuple[str, ...]
    # Task nodes whose results are the run's result.
    sinks: tuple[str, ...]
    # Node runs started after the roots before the run fails with MaxStepsExceeded.
    max_steps: int = DEFAULT_MAX_STEPS
    defaults: NodeDefaults = field(default_factory=NodeDefaults)
    _closures: dict[tuple[str, bool], str] = field(default_factory=dict, compare=False, repr=False)
    _flows: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    # The JSON texts by what determines them, shared by the nodes they are the same for (the
    # members of a fan-out have one closure and one flow): encoded once per plan, not per node.
    _texts: dict[tuple[object, ...], str] = field(default_factory=dict, compare=False, repr=False)

    def task(self, node_id: str) -> TaskData:
        node = self.nodes[node_id]
        if node.task is None:
            raise KeyError(f"node {node_id!r} is a group, not a task")
        return node.task

    def closure_json(self, node_id: str, *, failed: bool) -> str:
        """JSON list of the successor entries of ``node_id`` for the ``apply_outcome`` script.

        Entry: ``i`` id, ``k`` "t"/"g", ``p`` join size, ``u`` 1 when the join counts each
        predecessor once (several predecessors, groups); for groups also ``pol`` policy, ``n``
        min_success, ``c`` 1 when the parent is one of the group's critical members, ``s`` the
        group's successor entries, and (failure closures of small groups) ``m`` member ids.
        Computed once per node and kept; encoded once for all the nodes with the same successors
        (and the same place among the critical members of the groups among them).
        """
        key = (node_id, failed)
        cached = self._closures.get(key)
        if cached is None:
            successors = self.nodes[node_id].successors
            shape = ("closure", successors, failed,
                     tuple(node_id in self.nodes[succ].critical_ids for succ in successors))
            cached = self._texts.get(shape)
            if cached is None:
                cached = json.dumps(self._entries(node_id, failed), separators=(",", ":"))
                self._texts[shape] = cached
            self._closures[key] = cached
        return cached

    def _entries(self, parent_id: str, failed: bool) -> list[dict[str, object]]:
        entries: list[dict[str, object]] = []
        for succ_id in self.nodes[parent_id].successors:
            succ = self.nodes[succ_id]
            if succ.kind is NodeKind.TASK:
                entry_t: dict[str, object] = {"i": succ_id, "k": "t", "p": succ.preds}
                if succ.preds > 1:
                    entry_t["u"] = 1
                entries.append(entry_t)
                continue
            entry: dict[str, object] = {
                "i": succ_id,
                "k": "g",
                "p": succ.preds,
                "u": 1,
                "pol": succ.policy.value,
                "n": succ.min_success,
                "c": 1 if parent_id in succ.critical_ids else 0,
                # A group's successors are only reached through its success.
                "s": self._entries(succ_id, False),
            }
            if failed and len(succ.members) <= MEMBERS_NAMED_UP_TO:
                entry["m"] = list(succ.members)
            entries.append(entry)
        return entries

    def flow(self, node_id: str) -> dict[str, object]:
        """The flow argument of apply_outcome for an outcome of task ``node_id`` (see flow.lua):
        ``ms`` max steps, ``mc`` its max cycles, ``lp`` the loop edges it closes."""
        flow: dict[str, object] = {"ms": self.max_steps, "mc": self.task(node_id).max_cycles}
        loops = self.nodes[node_id].loops
        if loops:
            flow["lp"] = [
                {"h": lp.head, "mc": lp.head_max_cycles, "b": list(lp.body), "x": list(lp.clear)}
                for lp in loops
            ]
        return flow

    def flow_json(self, node_id: str) -> str:
        """:meth:`flow` as JSON, computed once per node and kept; encoded once for all the nodes
        that close no loop and have the same max cycles."""
        cached = self._flows.get(node_id)
        if cached is None:
            shape = None if self.nodes[node_id].loops else ("flow", self.task(node_id).max_cycles)
            cached = self._texts.get(shape) if shape else None
            if cached is None:
                cached = json.dumps(self.flow(node_id), separators=(",", ":"))
                if shape:
                    self._texts[shape] = cached
            self._flows[node_id] = cached
        return cached

    @property
    def queues(self) -> set[str]:
        """The queues of the plan's task nodes."""
        return {node.task.queue for node in self.nodes.values() if node.task is not None}

    @property
    def has_loops(self) -> bool:
        return any(node.loops for node in self.nodes.values())
