"""The run page's graph as SVG: the run's workflow spec (ResultStore.GetGraph by the run's graph
hash) with the run's node states, laid out by :mod:`graflow_console.graph_layout`.

What is drawn:
- one ``g.node`` per node of the run (``id="node-<node id>"``, ``data-node-id``, ``data-state`` =
  the NodeState name without its prefix), task nodes as rounded boxes with the id and task type;
- a parallel group as a join node (a smaller box, class ``group``): the edges into the group go to
  each member, each member goes to the join, and the group's own out-edges leave from the join;
- nodes added at run time (``NodeStatus.added_by``) connected to the node that added them (dashed);
- loop edges as dashed back edges below the boxes.
The page's script (static/run.js) changes ``data-state`` as events arrive; CSS colours by it.

A graph past the layout's limits (:func:`graflow_console.graph_layout.too_large`), or whose layout
does not finish within LAYOUT_DEADLINE_S, is shown as a node table instead (:func:`render_table`:
the same ``id``/``data-node-id``/``data-state`` per node, so live states and details still work)
with a note saying why. The layout runs in a thread (:func:`render_graph`): the console serves
everybody from one event loop, and a slow drawing must not stop it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from html import escape

from graflow.run import node_state_name
from graflow_api.v1 import scheduler_pb2, workflow_pb2

from graflow_console.graph_layout import NODE_H, Layout, layout, too_large

GROUP_W = 120.0
GROUP_H = 30.0
LABEL_CHARS = 24
LAYOUT_DEADLINE_S = 2.0


@dataclass(frozen=True)
class GraphNode:
    node_id: str
    kind: str  # "task" or "group"
    task_type: str
    state: str
    detail: str = ""  # a group's policy, for its label


@dataclass
class RunGraph:
    nodes: list[GraphNode] = field(default_factory=list)
    # (source, target, class): "edge", "edge dynamic" or "edge loop".
    edges: list[tuple[str, str, str]] = field(default_factory=list)


def run_graph(spec: workflow_pb2.WorkflowSpec, run: scheduler_pb2.Run) -> RunGraph:
    """The drawable graph of ``run`` (its nodes and states) over ``spec`` (its structure)."""
    statuses = {status.node_id: status for status in run.nodes}
    graph = RunGraph()
    seen: set[str] = set()

    def add(node_id: str, kind: str, task_type: str, detail: str = "") -> None:
        status = statuses.get(node_id)
        state = node_state_name(status.state) if status else "PENDING"
        graph.nodes.append(GraphNode(node_id, kind, task_type or (status.task_type if status else ""),
                                     state, detail))
        seen.add(node_id)

    for node in spec.nodes:
        add(node.id, "task", node.task_type)
    members: dict[str, list[str]] = {}
    for group in spec.groups:
        kind = workflow_pb2.GroupPolicy.Kind.Name(group.policy.kind).removeprefix("KIND_")
        detail = "STRICT" if kind == "UNSPECIFIED" else kind
        if group.policy.kind == workflow_pb2.GroupPolicy.KIND_AT_LEAST_N:
            detail = f"AT_LEAST {group.policy.min_success}"
        add(group.id, "group", "", detail)
        members[group.id] = list(group.member_ids)
        graph.edges.extend((member, group.id, "edge") for member in group.member_ids)
    for edge in spec.edges:
        targets = members.get(edge.to_id, [edge.to_id])
        css = "edge loop" if edge.loop else "edge"
        graph.edges.extend((edge.from_id, target, css) for target in targets)
    for status in run.nodes:  # nodes added at run time, after their spec's ones
        if status.node_id not in seen:
            add(status.node_id, status.kind or "task", status.task_type)
            if status.added_by:
                graph.edges.append((status.added_by, status.node_id, "edge dynamic"))
    return graph


def _label(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _path(points: list[tuple[float, float]]) -> str:
    """A smooth path through ``points``: cubic segments leaving and entering horizontally."""
    (x0, y0), rest = points[0], points[1:]
    parts = [f"M{x0:.1f},{y0:.1f}"]
    for x1, y1 in rest:
        mid = (x1 - x0) / 2
        parts.append(f"C{x0 + mid:.1f},{y0:.1f} {x1 - mid:.1f},{y1:.1f} {x1:.1f},{y1:.1f}")
        x0, y0 = x1, y1
    return " ".join(parts)


def _loop_path(placed: Layout, source: str, target: str) -> str:
    """A back edge: from under the source, down and back to under the target."""
    a, b = placed.boxes[source], placed.boxes[target]
    x0, y0 = a.x + a.w / 2, a.y + a.h
    x1, y1 = b.x + b.w / 2, b.y + b.h
    drop = max(y0, y1) + NODE_H * 0.9
    return f"M{x0:.1f},{y0:.1f} C{x0:.1f},{drop:.1f} {x1:.1f},{drop:.1f} {x1:.1f},{y1:.1f}"


def _layout_input(graph: RunGraph) -> tuple[list[str], list[tuple[str, str]]]:
    """The vertices and the forward (non-loop) edges the layout places."""
    return [node.node_id for node in graph.nodes], [(s, t) for s, t, css in graph.edges if "loop" not in css]


def render_table(graph: RunGraph, why: str) -> str:
    """``table#run-graph``: one row per node (id, type, state) and a note saying why there is no
    drawing (``why``)."""
    out = [f'<p id="graph-note" class="muted">The graph is shown as a table: {escape(why)}.</p>',
           '<table id="run-graph" class="node-table"><thead><tr><th>Node</th><th>Type</th>'
           "<th>State</th></tr></thead><tbody>"]
    for node in graph.nodes:
        node_id = escape(node.node_id)
        kind = escape(node.task_type or node.kind)
        if node.kind == "group":
            kind = f"join · {escape(node.detail)}"
        out.append(f'<tr class="node" id="node-{node_id}" data-node-id="{node_id}" data-state="{node.state}" '
                   f'tabindex="0"><td class="mono">{node_id}</td><td>{kind}</td>'
                   f'<td class="state">{node.state}</td></tr>')
    out.append("</tbody></table>")
    return "".join(out)


async def render_graph(graph: RunGraph, deadline_s: float = LAYOUT_DEADLINE_S) -> str:
    """The run page's graph markup: the SVG drawing, laid out in a thread within ``deadline_s``, or
    the node table when the graph is too large to draw or the layout missed the deadline."""
    why = too_large(*_layout_input(graph))
    if why:
        return render_table(graph, why)
    try:
        return await asyncio.wait_for(asyncio.to_thread(render_svg, graph), deadline_s)
    except TimeoutError:
        # The thread finishes on its own (threads cannot be stopped); too_large bounds its work.
        return render_table(graph, f"its layout took longer than {deadline_s:g} s")


def render_svg(graph: RunGraph) -> str:
    """``svg#run-graph`` of ``graph`` (escaped: ids and types are user-chosen text)."""
    vertices, forward = _layout_input(graph)
    sizes = {node.node_id: (GROUP_W, GROUP_H) for node in graph.nodes if node.kind == "group"}
    placed = layout(vertices, forward, sizes)
    has_loops = any("loop" in css for _, _, css in graph.edges)
    height = placed.height + (NODE_H if has_loops else 0)
    out = [
        f'<svg id="run-graph" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'viewBox="0 0 {placed.width:.0f} {height:.0f}" width="{placed.width:.0f}" height="{height:.0f}">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#7a8494"/>'
        "</marker></defs>",
    ]
    for source, target, css in graph.edges:
        if source not in placed.boxes or target not in placed.boxes:
            continue
        if "loop" in css:
            d = _loop_path(placed, source, target)
        else:
            route = placed.routes.get((source, target))
            if route is None:  # an edge the layering had to ignore: drawn straight
                a, b = placed.boxes[source], placed.boxes[target]
                route = [(a.x + a.w, a.y + a.h / 2), (b.x, b.y + b.h / 2)]
            d = _path(route)
        out.append(f'<path class="{css}" data-from="{escape(source)}" data-to="{escape(target)}" '
                   f'd="{d}" marker-end="url(#arrow)"/>')
    for node in graph.nodes:
        box = placed.boxes[node.node_id]
        node_id = escape(node.node_id)
        title = escape(f"{node.node_id} ({node.task_type or node.kind}) {node.state}")
        classes = "node group" if node.kind == "group" else "node"
        out.append(
            f'<g class="{classes}" id="node-{node_id}" data-node-id="{node_id}" '
            f'data-state="{node.state}" tabindex="0"><title>{title}</title>'
            f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{box.w:.1f}" height="{box.h:.1f}" rx="6"/>'
        )
        if node.kind == "group":
            out.append(f'<text x="{box.x + 8:.1f}" y="{box.y + 13:.1f}">{escape(_label(node.node_id))}</text>'
                       f'<text class="type" x="{box.x + 8:.1f}" y="{box.y + 25:.1f}">'
                       f"join · {escape(node.detail)}</text></g>")
        else:
            out.append(f'<text x="{box.x + 8:.1f}" y="{box.y + 16:.1f}">{escape(_label(node.node_id))}</text>'
                       f'<text class="type" x="{box.x + 8:.1f}" y="{box.y + 31:.1f}">'
                       f"{escape(_label(node.task_type))}</text></g>")
    out.append("</svg>")
    return "".join(out)

