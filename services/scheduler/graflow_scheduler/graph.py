"""Plan edges from a spec's edges and groups, and cycle detection (used by the compiler).

- edge ``X -> G`` (G a group) becomes ``X -> m`` for every member ``m``;
- every member ``m`` gets an edge ``m -> G``;
- edge ``G -> Y`` stays.

Repeated edges collapse into one, so a join never waits for an edge counted twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from graflow_api.v1 import workflow_pb2

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
