"""``graflow status RUN --graph``: a run's graph with each node's state, as Mermaid flowchart text or
as a tree for the terminal.

The graph is the submitted one (the result-store's blob of the run's ``graph_hash``: nodes, edges,
groups) plus the nodes tasks added at run time (``NodeStatus.added_by``, drawn from the node that
added them). In the tree, a node reached a second time is marked "(see above)", and a loop edge is
a leaf "loops back to X".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from rich.text import Text
from rich.tree import Tree

from graflow.cli.output import STATE_STYLES
from graflow.run import RunInfo, node_state_name
from graflow_api.v1 import workflow_pb2

FLOW, LOOP, ADDED = "flow", "loop", "added"
# Mermaid classes of node states (fill, stroke).
_MERMAID_CLASSES = {
    "succeeded": "fill:#dcfce7,stroke:#16a34a",
    "failed": "fill:#fee2e2,stroke:#dc2626",
    "canceled": "fill:#f3e8ff,stroke:#9333ea",
    "skipped": "fill:#f3f4f6,stroke:#9ca3af,stroke-dasharray:3",
    "waiting": "fill:#fef9c3,stroke:#ca8a04",
    "running": "fill:#e0f2fe,stroke:#0284c7",
    "ready": "fill:#e0f2fe,stroke:#0284c7",
    "pending": "fill:#ffffff,stroke:#9ca3af",
}
_ARROWS = {FLOW: "-->", LOOP: "-.->|loop|", ADDED: "-.->|added|"}


@dataclass
class RunGraph:
    """Node states in run order, edges ``(from, to, kind)`` and group members by group id."""

    states: dict[str, str]
    edges: list[tuple[str, str, str]]
    members: dict[str, list[str]] = field(default_factory=dict)

    def children(self, node_id: str) -> Iterator[tuple[str, str]]:
        for member in self.members.get(node_id, []):
            yield member, FLOW
        for src, dst, kind in self.edges:
            if src == node_id:
                yield dst, kind

    def roots(self) -> list[str]:
        inner = {m for ms in self.members.values() for m in ms}
        reached = {dst for _, dst, kind in self.edges if kind != LOOP}
        return [n for n in self.states if n not in inner and n not in reached]


def run_graph(info: RunInfo, spec: workflow_pb2.WorkflowSpec) -> RunGraph:
    graph = RunGraph(
        states={node.node_id: node_state_name(node.state) for node in info.nodes},
        edges=[(e.from_id, e.to_id, LOOP if e.loop else FLOW) for e in spec.edges],
        members={group.id: list(group.member_ids) for group in spec.groups},
    )
    graph.edges += [(node.added_by, node.node_id, ADDED) for node in info.nodes if node.added_by]
    return graph


def mermaid(graph: RunGraph) -> str:
    """Mermaid ``flowchart TD`` text: a node per task, a subgraph per group, a class per state."""
    ids = {node_id: f"n{i}" for i, node_id in enumerate(graph.states)}

    def label(node_id: str) -> str:
        return f'"{node_id} · {graph.states[node_id]}"'.replace("<", "#lt;").replace(">", "#gt;")

    lines = ["flowchart TD"]
    lines += [f"  classDef {name} {style}" for name, style in _MERMAID_CLASSES.items()]
    inner = {m for ms in graph.members.values() for m in ms}
    for node_id in graph.states:
        if node_id in graph.members:
            lines.append(f"  subgraph {ids[node_id]}[{label(node_id)}]")
            lines += [f"    {ids[m]}[{label(m)}]" for m in graph.members[node_id] if m in ids]
            lines.append("  end")
        elif node_id not in inner:
            lines.append(f"  {ids[node_id]}[{label(node_id)}]")
    for src, dst, kind in graph.edges:
        if src in ids and dst in ids:
            lines.append(f"  {ids[src]} {_ARROWS[kind]} {ids[dst]}")
    for node_id, state in graph.states.items():
        lines.append(f"  class {ids[node_id]} {state.lower()}")
    return "\n".join(lines)


def tree(graph: RunGraph, title: str) -> Tree:
    """The graph as a tree from its roots (what the terminal shows)."""
    root = Tree(Text(title, style="bold"))
    shown: set[str] = set()

    def add(parent: Tree, node_id: str) -> None:
        state = graph.states.get(node_id, "?")
        text = Text(node_id + "  ").append(state, style=STATE_STYLES.get(state, ""))
        if node_id in graph.members:
            text.append("  (group)", style="dim")
        if node_id in shown:
            parent.add(text.append("  (see above)", style="dim"))
            return
        shown.add(node_id)
        branch = parent.add(text)
        for child, kind in graph.children(node_id):
            if kind == LOOP:
                branch.add(Text(f"loops back to {child}", style="dim"))
            else:
                add(branch, child)

    for node_id in graph.roots():
        add(root, node_id)
    return root
