"""The run graph's SVG: groups as joins, dynamic nodes linked to who added them, loops, states,
escaping."""

from __future__ import annotations

import asyncio
import re
import time

from graflow_api.v1 import common_pb2, scheduler_pb2, workflow_pb2

from graflow_console.graph_svg import RunGraph, render_graph, render_svg, run_graph


def spec() -> workflow_pb2.WorkflowSpec:
    return workflow_pb2.WorkflowSpec(
        name="demo",
        nodes=[workflow_pb2.NodeSpec(id=i, task_type=f"t_{i}") for i in ("a", "b", "c", "d")],
        groups=[workflow_pb2.GroupSpec(id="g", member_ids=["b", "c"], policy=workflow_pb2.GroupPolicy(
            kind=workflow_pb2.GroupPolicy.KIND_AT_LEAST_N, min_success=1))],
        edges=[workflow_pb2.EdgeSpec(from_id="a", to_id="g"), workflow_pb2.EdgeSpec(from_id="g", to_id="d"),
               workflow_pb2.EdgeSpec(from_id="d", to_id="a", loop=True)],
    )


def run() -> scheduler_pb2.Run:
    return scheduler_pb2.Run(run_id="r", nodes=[
        scheduler_pb2.NodeStatus(node_id="a", state=common_pb2.NODE_STATE_SUCCEEDED, kind="task"),
        scheduler_pb2.NodeStatus(node_id="b", state=common_pb2.NODE_STATE_FAILED, kind="task"),
        scheduler_pb2.NodeStatus(node_id="c", state=common_pb2.NODE_STATE_SUCCEEDED, kind="task"),
        scheduler_pb2.NodeStatus(node_id="g", state=common_pb2.NODE_STATE_SUCCEEDED, kind="group"),
        scheduler_pb2.NodeStatus(node_id="d", state=common_pb2.NODE_STATE_WAITING, kind="task"),
        scheduler_pb2.NodeStatus(node_id="extra", state=common_pb2.NODE_STATE_READY, kind="task",
                                 task_type="t_extra", added_by="c"),
    ])


def test_groups_are_joins_and_dynamic_nodes_hang_off_who_added_them():
    graph = run_graph(spec(), run())
    edges = {(s, t): css for s, t, css in graph.edges}
    assert edges[("a", "b")] == edges[("a", "c")] == "edge"  # into the group: to each member
    assert edges[("b", "g")] == edges[("c", "g")] == "edge"  # members join
    assert edges[("g", "d")] == "edge"  # out of the group: from the join
    assert edges[("d", "a")] == "edge loop"
    assert edges[("c", "extra")] == "edge dynamic"
    group = next(n for n in graph.nodes if n.node_id == "g")
    assert group.kind == "group" and group.detail == "AT_LEAST 1"


def test_the_svg_has_one_node_per_run_node_with_its_state():
    svg = render_svg(run_graph(spec(), run()))
    assert svg.startswith('<svg id="run-graph"')
    node = r'<g class="node[^"]*" id="node-([^"]+)" data-node-id="[^"]+" data-state="([A-Z]+)"'
    states = dict(re.findall(node, svg))
    assert states == {"a": "SUCCEEDED", "b": "FAILED", "c": "SUCCEEDED", "g": "SUCCEEDED", "d": "WAITING",
                      "extra": "READY"}
    assert svg.count('class="edge loop"') == 1 and svg.count('class="edge dynamic"') == 1
    assert 'class="node group"' in svg


def test_a_node_not_yet_in_the_run_is_pending_and_user_text_is_escaped():
    script = "<script>alert(1)</script>"
    hostile = workflow_pb2.WorkflowSpec(nodes=[workflow_pb2.NodeSpec(id="x", task_type=script)])
    svg = render_svg(run_graph(hostile, scheduler_pb2.Run()))
    assert 'data-state="PENDING"' in svg
    assert "<script>" not in svg and "&lt;script&gt;" in svg


def test_a_twenty_node_graph_stays_within_its_drawing():
    nodes = [workflow_pb2.NodeSpec(id=f"n{i}", task_type="work") for i in range(20)]
    edges = [workflow_pb2.EdgeSpec(from_id=f"n{i}", to_id=f"n{i + 1}") for i in range(0, 19, 2)]
    svg = render_svg(run_graph(workflow_pb2.WorkflowSpec(nodes=nodes, edges=edges), scheduler_pb2.Run()))
    width, height = (float(v) for v in re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', svg).groups())
    for x, y in re.findall(r'<rect x="([\d.]+)" y="([\d.]+)"', svg):
        assert 0 <= float(x) < width and 0 <= float(y) < height


def chain_with_root_edges(n: int) -> RunGraph:
    """A chain of ``n`` nodes and an edge from the root to every node: ~n²/2 dummy vertices."""
    graph = run_graph(workflow_pb2.WorkflowSpec(
        name="wide",
        nodes=[workflow_pb2.NodeSpec(id=f"n{i}", task_type="t") for i in range(n)],
        edges=[workflow_pb2.EdgeSpec(from_id=f"n{i}", to_id=f"n{i + 1}") for i in range(n - 1)]
        + [workflow_pb2.EdgeSpec(from_id="n0", to_id=f"n{i}") for i in range(2, n)],
    ), scheduler_pb2.Run(run_id="r"))
    return graph


def test_a_graph_too_large_to_draw_is_a_node_table_at_once():
    for n, why in ((1000, "1,000 nodes"), (150, "layers")):  # too many nodes; too long a span
        started = time.monotonic()
        markup = asyncio.run(render_graph(chain_with_root_edges(n)))
        assert time.monotonic() - started < 0.5
        assert markup.startswith('<p id="graph-note"') and why in markup
        assert '<table id="run-graph"' in markup and "<svg" not in markup
        assert markup.count('<tr class="node"') == n
        assert 'id="node-n0" data-node-id="n0" data-state="PENDING"' in markup


def test_a_graph_within_the_limits_is_drawn():
    markup = asyncio.run(render_graph(chain_with_root_edges(40)))
    assert markup.startswith('<svg id="run-graph"')


def test_a_layout_past_its_deadline_falls_back_to_the_table():
    markup = asyncio.run(render_graph(run_graph(spec(), run()), deadline_s=0.0))
    assert "its layout took longer than 0 s" in markup and '<table id="run-graph"' in markup
    assert 'data-node-id="g"' in markup and "join · AT_LEAST 1" in markup
