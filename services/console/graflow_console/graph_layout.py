"""A layered drawing of a run's graph, computed in Python (no Graphviz binary, no JS library).

The classic Sugiyama steps, small enough to read in one sitting:
1. layers by longest path from the roots, so every edge points to a later layer (loop edges, which
   close cycles by design, are left out of the layering and drawn as back edges);
2. an edge spanning several layers gets a dummy vertex in each layer it crosses, so that it takes
   part in the ordering and bends around nodes instead of crossing them;
3. the order within each layer is improved by barycentric sweeps (down, then up, a few times):
   a vertex moves to the mean position of its neighbours in the previous layer, which removes
   most crossings of the graphs people draw (fan-out, fan-in, chains);
4. coordinates: layers are columns left to right, vertices evenly spaced in each column and
   centred on the tallest one.
It stays readable for 20-100 nodes, and runs in well under a millisecond per node.

Its cost grows with the dummy vertices, i.e. with the layers the long edges span: a chain of N nodes
with an edge from the root to each of them has ~N²/2 dummies (N=1000: 23 s and a 25 MB SVG).
:func:`too_large` tells, in linear time, when a graph is past what the drawing is for
(MAX_VERTICES vertices or MAX_SPAN dummy vertices); the console then shows a node table instead.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

SWEEPS = 4
# Past these, a layered drawing is neither readable nor cheap (see the module's docstring).
MAX_VERTICES = 300
MAX_SPAN = 5_000
NODE_W = 168.0
NODE_H = 40.0
GAP_X = 64.0
GAP_Y = 18.0
MARGIN = 16.0


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    w: float
    h: float

    def overlaps(self, other: Box) -> bool:
        return (self.x < other.x + other.w and other.x < self.x + self.w
                and self.y < other.y + other.h and other.y < self.y + self.h)


@dataclass
class Layout:
    boxes: dict[str, Box]
    layer_of: dict[str, int]
    # Per edge (source, target) that is not a loop edge: the points it passes through, from the
    # source's right side to the target's left side (one per dummy vertex in between).
    routes: dict[tuple[str, str], list[tuple[float, float]]] = field(default_factory=dict)
    width: float = 0.0
    height: float = 0.0


def layers(vertices: Sequence[str], edges: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Longest-path layer of every vertex over ``edges`` (which must form a DAG; an edge that would
    close a cycle is ignored rather than looping for ever)."""
    successors: dict[str, list[str]] = defaultdict(list)
    indegree = dict.fromkeys(vertices, 0)
    for source, target in edges:
        if source in indegree and target in indegree and source != target:
            successors[source].append(target)
            indegree[target] += 1
    layer = dict.fromkeys(vertices, 0)
    ready = [v for v in vertices if indegree[v] == 0]
    while ready:
        vertex = ready.pop()
        for target in successors[vertex]:
            layer[target] = max(layer[target], layer[vertex] + 1)
            indegree[target] -= 1
            if indegree[target] == 0:
                ready.append(target)
    return layer


def too_large(vertices: Sequence[str], edges: Sequence[tuple[str, str]]) -> str:
    """Why ``layout`` of this graph would be too slow or too big to read ("" when it is fine): more
    than MAX_VERTICES vertices, or more than MAX_SPAN dummy vertices (layers crossed by long
    edges). Linear in the vertices and edges."""
    if len(vertices) > MAX_VERTICES:
        return f"{len(vertices):,} nodes (the drawing is for at most {MAX_VERTICES:,})"
    layer_of = layers(vertices, edges)
    span = sum(max(layer_of[t] - layer_of[s] - 1, 0) for s, t in edges if s in layer_of and t in layer_of)
    if span > MAX_SPAN:
        return f"its long edges cross {span:,} layers (the drawing is for at most {MAX_SPAN:,})"
    return ""


def _crossing_order(row: list[str], neighbours: dict[str, list[str]], fixed: list[str]) -> list[str]:
    """One barycentric pass: the vertices of ``row`` sorted by the mean position of their neighbours in
    ``fixed`` (a vertex without any keeps its place)."""
    position = {v: i for i, v in enumerate(fixed)}
    keyed = []
    for index, vertex in enumerate(row):
        around = [position[n] for n in neighbours[vertex] if n in position]
        keyed.append((sum(around) / len(around) if around else float(index), index, vertex))
    return [vertex for _, _, vertex in sorted(keyed)]


def layout(vertices: Sequence[str], edges: Sequence[tuple[str, str]],
           sizes: dict[str, tuple[float, float]] | None = None) -> Layout:
    """Boxes of ``vertices`` (in their given order where nothing better is found) and routes of
    ``edges`` (non-loop edges only: pass loop edges elsewhere). ``sizes``: width and height of
    vertices that are not NODE_W x NODE_H."""
    sizes = sizes or {}
    layer_of = layers(vertices, edges)
    # Dummy vertices: one per layer strictly between an edge's ends.
    chains: dict[tuple[str, str], list[str]] = {}
    layer_members: dict[int, list[str]] = defaultdict(list)
    for vertex in vertices:
        layer_members[layer_of[vertex]].append(vertex)
    down: dict[str, list[str]] = defaultdict(list)
    up: dict[str, list[str]] = defaultdict(list)
    for source, target in edges:
        if source not in layer_of or target not in layer_of or layer_of[target] <= layer_of[source]:
            continue
        chain = [source]
        for level in range(layer_of[source] + 1, layer_of[target]):
            dummy = f"\x00{source}\x00{target}\x00{level}"
            layer_members[level].append(dummy)
            chain.append(dummy)
        chain.append(target)
        chains[(source, target)] = chain[1:-1]
        for a, b in zip(chain, chain[1:], strict=False):
            down[b].append(a)
            up[a].append(b)
    depth = max(layer_members, default=-1) + 1
    order = [layer_members[level] for level in range(depth)]
    for _ in range(SWEEPS):
        for level in range(1, depth):
            order[level] = _crossing_order(order[level], down, order[level - 1])
        for level in range(depth - 2, -1, -1):
            order[level] = _crossing_order(order[level], up, order[level + 1])
    tallest = max((len(row) for row in order), default=0)
    step_y = NODE_H + GAP_Y
    boxes: dict[str, Box] = {}
    centres: dict[str, tuple[float, float]] = {}
    for level, row in enumerate(order):
        x = MARGIN + level * (NODE_W + GAP_X)
        offset = MARGIN + (tallest - len(row)) * step_y / 2
        for index, vertex in enumerate(row):
            top = offset + index * step_y
            if vertex.startswith("\x00"):
                centres[vertex] = (x + NODE_W / 2, top + NODE_H / 2)
                continue
            w, h = sizes.get(vertex, (NODE_W, NODE_H))
            box = Box(x + (NODE_W - w) / 2, top + (NODE_H - h) / 2, w, h)
            boxes[vertex] = box
            centres[vertex] = (box.x + w / 2, box.y + h / 2)
    routes = {}
    for (source, target), dummies in chains.items():
        start, end = boxes[source], boxes[target]
        points = [(start.x + start.w, start.y + start.h / 2)]
        points.extend(centres[d] for d in dummies)
        points.append((end.x, end.y + end.h / 2))
        routes[(source, target)] = points
    width = MARGIN * 2 + max(depth, 1) * NODE_W + max(depth - 1, 0) * GAP_X
    height = MARGIN * 2 + max(tallest, 1) * step_y
    return Layout(boxes, layer_of, routes, width, height)
