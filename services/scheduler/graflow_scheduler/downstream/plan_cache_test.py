from graflow_scheduler.downstream.plan_cache import compiles_inline
from graflow_scheduler.testing.flows import loop_edge
from graflow_scheduler.testing.specs import group, spec


def test_small_specs_compile_inline():
    assert compiles_inline(spec(["a", "b", "c"], ["a>b", "b>c"], [group("g", ["a", "b"])]))


def test_few_nodes_with_many_edges_or_members_compile_off_the_event_loop():
    # Counting nodes only, these compiled on the event loop (issue 14: "on the event loop for
    # specs under 2,000 nodes").
    assert not compiles_inline(spec(["a", "b"], ["a>b"] * 5000))
    members = [f"m{i}" for i in range(1500)]
    assert not compiles_inline(spec(members, [], [group("g", members), group("h", members)]))


def test_loop_edges_count_as_walks_of_the_whole_graph():
    chain = spec([f"n{i}" for i in range(100)], [f"n{i}>n{i + 1}" for i in range(99)])
    assert compiles_inline(chain)
    chain.edges.extend(loop_edge("n99", "n0") for _ in range(50))
    assert not compiles_inline(chain)
