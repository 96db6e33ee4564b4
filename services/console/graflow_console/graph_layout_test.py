"""The layered layout: edges point forward, boxes never overlap, crossings are removed."""

from __future__ import annotations

import itertools
import random

import pytest

from graflow_console.graph_layout import Layout, layers, layout


def assert_sound(placed: Layout, vertices: list[str], edges: list[tuple[str, str]]) -> None:
    assert set(placed.boxes) == set(vertices)
    for a, b in itertools.combinations(vertices, 2):
        assert not placed.boxes[a].overlaps(placed.boxes[b]), (a, b)
    for source, target in edges:
        assert placed.layer_of[source] < placed.layer_of[target], (source, target)
        assert placed.boxes[source].x < placed.boxes[target].x
    for box in placed.boxes.values():
        assert box.x >= 0 and box.x + box.w <= placed.width
        assert box.y >= 0 and box.y + box.h <= placed.height


def crossings(placed: Layout, edges: list[tuple[str, str]]) -> int:
    """Crossings between edges of adjacent layers, counted on the boxes' vertical order."""
    count = 0
    for (a, b), (c, d) in itertools.combinations(edges, 2):
        if placed.layer_of[a] == placed.layer_of[c] and placed.layer_of[b] == placed.layer_of[d]:
            ya, yb, yc, yd = (placed.boxes[v].y for v in (a, b, c, d))
            if (ya - yc) * (yb - yd) < 0:
                count += 1
    return count


def test_layers_are_longest_paths_from_the_roots():
    edges = [("a", "b"), ("b", "c"), ("a", "c"), ("c", "d")]
    assert layers(["a", "b", "c", "d"], edges) == {"a": 0, "b": 1, "c": 2, "d": 3}


def test_a_long_edge_bends_through_the_layers_it_crosses():
    edges = [("a", "b"), ("b", "c"), ("a", "c")]
    placed = layout(["a", "b", "c"], edges)
    assert len(placed.routes[("a", "c")]) == 3  # start, one dummy, end
    assert len(placed.routes[("a", "b")]) == 2


def test_barycentric_ordering_untangles_two_crossed_chains():
    # Given in an order that crosses: a1 -> b2 and a2 -> b1 with b1 listed first.
    vertices = ["a1", "a2", "b2", "b1"]
    edges = [("a1", "b1"), ("a2", "b2")]
    placed = layout(vertices, edges)
    assert crossings(placed, edges) == 0


def test_a_cycle_left_by_mistake_does_not_hang_the_layout():
    placed = layout(["a", "b"], [("a", "b"), ("b", "a")])
    assert set(placed.boxes) == {"a", "b"}


@pytest.mark.parametrize("seed", range(5))
def test_random_dags_of_up_to_100_nodes_are_sound(seed: int):
    rng = random.Random(seed)
    size = rng.randint(20, 100)
    vertices = [f"n{i}" for i in range(size)]
    edges = sorted({(vertices[i], vertices[j]) for _ in range(size * 2)
                    for i, j in [sorted(rng.sample(range(size), 2))]})
    shuffled = vertices[:]
    rng.shuffle(shuffled)
    placed = layout(shuffled, edges)
    assert_sound(placed, vertices, edges)


def test_a_wide_fan_out_and_in_has_no_crossings():
    members = [f"m{i}" for i in range(20)]
    edges = [("start", m) for m in members] + [(m, "end") for m in members]
    placed = layout(["start", *members, "end"], edges)
    assert_sound(placed, ["start", *members, "end"], edges)
    assert crossings(placed, edges) == 0
