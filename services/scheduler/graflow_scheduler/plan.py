"""The compiled, immutable form of a workflow that the scheduler runs (see "Graph model" in
docs/architecture.md).

A group is a join node that is never executed: its members have an edge to it, and an edge into a
group was fanned out to every member by the compiler. Each node knows how many predecessors it
joins over, its successors and its join policy; task nodes carry what goes into their envelopes.

The ``apply_outcome`` Lua script never sees the whole graph. For the node an outcome is about,
:meth:`Plan.closure_json` gives just what the script needs: the node's successors and, for group
successors, their own successors (recursively), with join sizes and policies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

# Groups up to this size carry their member ids in failure closures, so the script can name the
# failed and succeeded members in the run's error; larger groups are summarised by counts.
MEMBERS_NAMED_UP_TO = 64


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
    backoff_factor: float = 2.0
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


@dataclass(frozen=True)
class Plan:
    name: str
    # Nodes in spec order: task nodes first, then groups.
    nodes: Mapping[str, PlanNode]
    roots: tuple[str, ...]
    # Task nodes whose results are the run's result.
    sinks: tuple[str, ...]
    _closures: dict[tuple[str, bool], str] = field(default_factory=dict, compare=False, repr=False)

    def task(self, node_id: str) -> TaskData:
        node = self.nodes[node_id]
        if node.task is None:
            raise KeyError(f"node {node_id!r} is a group, not a task")
        return node.task

    def closure_json(self, node_id: str, *, failed: bool) -> str:
        """JSON list of the successor entries of ``node_id`` for the ``apply_outcome`` script.

        Entry: ``i`` id, ``k`` "t"/"g", ``p`` join size; for groups also ``pol`` policy, ``n``
        min_success, ``c`` 1 when the parent is one of the group's critical members, ``s`` the
        group's successor entries, and (failure closures of small groups) ``m`` member ids.
        Computed once per node and kept.
        """
        key = (node_id, failed)
        cached = self._closures.get(key)
        if cached is None:
            cached = json.dumps(self._entries(node_id, failed), separators=(",", ":"))
            self._closures[key] = cached
        return cached

    def _entries(self, parent_id: str, failed: bool) -> list[dict[str, object]]:
        entries: list[dict[str, object]] = []
        for succ_id in self.nodes[parent_id].successors:
            succ = self.nodes[succ_id]
            if succ.kind is NodeKind.TASK:
                entries.append({"i": succ_id, "k": "t", "p": succ.preds})
                continue
            entry: dict[str, object] = {
                "i": succ_id,
                "k": "g",
                "p": succ.preds,
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
