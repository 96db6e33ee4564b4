"""The size and value limits of a submitted workflow (issue 14, "No single request takes a service
down"): each refused with a SpecError (INVALID_ARGUMENT) naming the field and the limit, before
anything big is built."""

import pytest

from graflow_api.v1 import common_pb2, workflow_pb2
from graflow_runtime import limits as lim

from graflow_scheduler.graph import edges as edges_module
from graflow_scheduler.graph.compiler import Limits, compile_spec
from graflow_scheduler.testing.flows import loop_edge
from graflow_scheduler.testing.specs import group, node, rejects, spec


def test_a_group_fan_in_over_the_expanded_edge_limit_is_refused_naming_it():
    # 1,100 sources into a group of 1,000 members: 1,100,000 plan edges if built (the issue's
    # 4,000 x 4,000 made 16,000,000 of them, ~800 MiB and 10 s, from a ~140 KB spec).
    sources = [f"s{i}" for i in range(1100)]
    members = [f"m{i}" for i in range(1000)]
    workflow = spec([*sources, *members], [f"{s}>g" for s in sources], [group("g", members)])
    message = rejects(workflow, "MAX_EXPANDED_EDGES", f"{lim.MAX_EXPANDED_EDGES:,}")
    assert "1,101,000" in message  # the sources' edges to each member, and each member's to g


def test_an_edge_out_of_a_big_group_counts_once_per_member_it_passes_results_from():
    members = [f"m{i}" for i in range(1000)]
    sinks = [f"z{i}" for i in range(600)]
    workflow = spec([*members, *sinks], [f"g>{z}" for z in sinks], [group("g", members)])
    rejects(workflow, "MAX_EXPANDED_EDGES")


def test_a_fan_in_within_the_limit_still_compiles():
    members = [f"m{i}" for i in range(100)]
    plan = compile_spec(spec(["a", *members, "z"], ["a>g", "g>z"], [group("g", members)]), Limits())
    assert plan.nodes["a"].successors == tuple(members)
    assert plan.task("z").input_node_ids == tuple(members)


def test_more_edges_or_members_than_the_limits_are_refused():
    rejects(spec(["a", "b", "c"], ["a>b", "b>c"]), "2 edges", "the limit is 1", limits=Limits(max_edges=1))
    rejects(
        spec(["a", "b", "c"], [], [group("g", ["a", "b"]), group("h", ["c"])]),
        "3 group members",
        "the limit is 2",
        limits=Limits(max_group_members=2),
    )


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"timeout_ms": lim.MAX_TIMEOUT_MS + 1}, f"timeout_ms is {lim.MAX_TIMEOUT_MS + 1}"),
        ({"priority": lim.MAX_PRIORITY + 1}, f"priority is {lim.MAX_PRIORITY + 1}"),
        ({"priority": -lim.MAX_PRIORITY - 1}, f"priority is {-lim.MAX_PRIORITY - 1}"),
        ({"max_cycles": lim.MAX_CYCLES + 1}, f"max_cycles is {lim.MAX_CYCLES + 1}"),
        (
            {"retry": common_pb2.RetryPolicy(initial_interval_ms=lim.MAX_RETRY_INTERVAL_MS + 1)},
            "retry.initial_interval_ms",
        ),
        (
            {"retry": common_pb2.RetryPolicy(max_interval_ms=lim.MAX_RETRY_INTERVAL_MS + 1)},
            "retry.max_interval_ms",
        ),
    ],
)
def test_node_values_beyond_their_limits_are_refused_naming_field_and_limit(fields, problem):
    rejects(spec([node("a", **fields)]), "node 'a'", problem, "the limit is")


@pytest.mark.parametrize(
    "defaults, problem",
    [
        (workflow_pb2.RunDefaults(timeout_ms=lim.MAX_TIMEOUT_MS + 1), "defaults.timeout_ms"),
        (workflow_pb2.RunDefaults(max_cycles=lim.MAX_CYCLES + 1), "defaults.max_cycles"),
        (workflow_pb2.RunDefaults(max_steps=lim.MAX_STEPS + 1), "defaults.max_steps"),
        (
            workflow_pb2.RunDefaults(
                retry=common_pb2.RetryPolicy(max_interval_ms=lim.MAX_RETRY_INTERVAL_MS + 1)
            ),
            "defaults.retry.max_interval_ms",
        ),
    ],
)
def test_run_defaults_beyond_their_limits_are_refused(defaults, problem):
    rejects(spec(["a"], defaults=defaults), problem, "the limit is")


def test_values_at_their_limits_are_accepted():
    retry = common_pb2.RetryPolicy(
        max_attempts=lim.MAX_ATTEMPTS,
        initial_interval_ms=lim.MAX_RETRY_INTERVAL_MS,
        max_interval_ms=lim.MAX_RETRY_INTERVAL_MS,
    )
    fields = {"timeout_ms": lim.MAX_TIMEOUT_MS, "priority": -lim.MAX_PRIORITY, "max_cycles": lim.MAX_CYCLES}
    defaults = workflow_pb2.RunDefaults(max_steps=lim.MAX_STEPS)
    plan = compile_spec(spec([node("a", retry=retry, **fields)], defaults=defaults), Limits())
    assert plan.task("a").timeout_ms == lim.MAX_TIMEOUT_MS
    assert plan.max_steps == lim.MAX_STEPS


def _chain_with_loops(length, loops):
    workflow = spec([f"n{i}" for i in range(length)], [f"n{i}>n{i + 1}" for i in range(length - 1)])
    workflow.edges.extend(loop_edge(*pair) for pair in loops)
    return workflow


def test_repeated_loop_edges_are_walked_once(monkeypatch):
    walks = []
    real = edges_module.reachable

    def counting(adjacent, start):
        walks.append(start)
        return real(adjacent, start)

    monkeypatch.setattr(edges_module, "reachable", counting)
    # The same loop edge 5,000 times: it used to be walked once per copy before they were merged.
    plan = compile_spec(_chain_with_loops(50, [("n49", "n1")] * 5000), Limits())
    assert len(plan.nodes["n49"].loops) == 1
    assert len(walks) <= 3  # validating the edge, then its body: forwards and backwards


def test_more_distinct_loop_edges_than_the_limit_are_refused():
    loops = [(f"n{i + 1}", f"n{i}") for i in range(lim.MAX_LOOP_EDGES + 1)]
    rejects(_chain_with_loops(lim.MAX_LOOP_EDGES + 2, loops), f"{lim.MAX_LOOP_EDGES + 1} distinct loop edges",
            "MAX_LOOP_EDGES")


def test_loop_edges_times_the_graph_size_over_the_limit_are_refused_before_any_walk(monkeypatch):
    # Each loop edge walks the whole graph and carries its body and cleared fields into every
    # outcome of its tail: 100 loops over a 30,000-node chain would be 6,000,000 steps.
    walks = []
    monkeypatch.setattr(edges_module, "reachable", lambda adjacent, start: walks.append(start) or set())
    loops = [(f"n{29_999 - i}", f"n{i}") for i in range(100)]
    rejects(_chain_with_loops(30_000, loops), "MAX_LOOP_WALK", f"{lim.MAX_LOOP_WALK:,}")
    assert walks == []
