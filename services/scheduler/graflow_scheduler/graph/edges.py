"""Plan edges from a spec's edges and groups, and cycle detection (used by the compiler).

- edge ``X -> G`` (G a group) becomes ``X -> m`` for every member ``m``;
- every member ``m`` gets an edge ``m -> G``;
- edge ``G -> Y`` stays.

Repeated edges collapse into one, so a join never waits for an edge counted twice. Loop edges
(``EdgeSpec.loop``) are not plan edges: :func:`loop_edges` validates them and :func:`loop_body`
finds the nodes each one runs again.
"""

from __future__ import annotations

from dataclasses import dataclass

from graflow_api.v1 import workflow_pb2
from graflow_runtime.limits import MAX_LOOP_EDGES, MAX_LOOP_WALK

from graflow_scheduler.errors import SpecError


@dataclass
class Edges:
    # node id -> ordered set (dict keys) of successor / predecessor ids, for every node and group.
    succs: dict[str, dict[str, None]]
    preds: dict[str, dict[str, None]]

    def add(self, src: str, dst: str) -> None:
        self.succs[src][dst] = None
        self.preds[dst][src] = None


def build_edges(
    spec: workflow_pb2.WorkflowSpec, task_ids: list[str], members: dict[str, tuple[str, ...]]
) -> Edges:
    all_ids = [*task_ids, *members]
    edges = Edges(succs={i: {} for i in all_ids}, preds={i: {} for i in all_ids})
    for group_id, group_members in members.items():
        for member in group_members:
            edges.add(member, group_id)
    for edge in spec.edges:
        if edge.loop:
            continue
        targets = members.get(edge.to_id)
        if targets is None:
            edges.add(edge.from_id, edge.to_id)
            continue
        if edge.from_id in targets:
            raise SpecError(
                f"edge {edge.from_id!r} -> {edge.to_id!r}: {edge.from_id!r} is a member of group "
                f"{edge.to_id!r} and cannot also precede it"
            )
        for member in targets:
            edges.add(edge.from_id, member)
    return edges


def find_cycle(edges: Edges) -> list[str] | None:
    """A cycle as a path ``[a, b, ..., a]``, or None when the graph is acyclic (iterative DFS)."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(edges.succs, white)
    for start in edges.succs:
        if color[start] != white:
            continue
        path = [start]
        stack = [iter(edges.succs[start])]
        color[start] = grey
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                color[path.pop()] = black
                stack.pop()
                continue
            if color[nxt] == grey:
                return [*path[path.index(nxt) :], nxt]
            if color[nxt] == white:
                color[nxt] = grey
                path.append(nxt)
                stack.append(iter(edges.succs[nxt]))
    return None


def reachable(adjacent: dict[str, dict[str, None]], start: str) -> set[str]:
    """``start`` and every id reachable from it through ``adjacent`` (successors or predecessors)."""
    seen = {start}
    stack = [start]
    while stack:
        for nxt in adjacent[stack.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def loop_edges(spec: workflow_pb2.WorkflowSpec, edges: Edges, task_ids: set[str]) -> list[tuple[str, str]]:
    """The spec's loop edges as (tail, head), repeated ones once. Each goes from a task to a task
    that leads back to it through plan edges (it closes a cycle).

    Repeated edges are merged before any is walked, and there may be at most MAX_LOOP_EDGES
    distinct ones, and MAX_LOOP_WALK for their number times the graph's size: each is walked
    through the graph here and twice more for its body, and its body rides in every outcome of
    its tail."""
    loops = dict.fromkeys((edge.from_id, edge.to_id) for edge in spec.edges if edge.loop)
    if len(loops) > MAX_LOOP_EDGES:
        raise SpecError(
            f"workflow has {len(loops):,} distinct loop edges; the limit MAX_LOOP_EDGES is {MAX_LOOP_EDGES}"
        )
    size = len(edges.succs) + sum(len(succs) for succs in edges.succs.values())
    if len(loops) * size > MAX_LOOP_WALK:
        raise SpecError(
            f"workflow has {len(loops):,} distinct loop edges in a graph of {size:,} nodes and edges: "
            f"{len(loops) * size:,} steps; the limit MAX_LOOP_WALK is {MAX_LOOP_WALK:,}: use fewer "
            "loop edges, or loop over a smaller workflow (a child run)"
        )
    for tail, head in loops:
        if tail not in task_ids or head not in task_ids:
            raise SpecError(
                f"loop edge {tail!r} -> {head!r}: a loop edge goes from a task node to a task node, "
                "not from or to a group (put a task after the group and loop from it)"
            )
        if tail not in reachable(edges.succs, head):
            raise SpecError(
                f"loop edge {tail!r} -> {head!r} closes no cycle: {head!r} does not lead to {tail!r} "
                "through normal edges; make it a normal edge (loop=false) or point it at an upstream task"
            )
    return list(loops)


def loop_body(edges: Edges, tail: str, head: str) -> tuple[str, ...]:
    """Nodes on the plan paths from ``head`` to ``tail``: ``tail`` included, ``head`` excluded."""
    body = reachable(edges.succs, head) & reachable(edges.preds, tail)
    return tuple(n for n in edges.succs if n in body and n != head)
