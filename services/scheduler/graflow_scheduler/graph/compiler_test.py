import json

import pytest

from graflow_api.v1 import common_pb2, workflow_pb2

from graflow_scheduler.graph.compiler import Limits, compile_spec
from graflow_scheduler.graph.plan import JoinPolicy, NodeKind, RetryConfig
from graflow_scheduler.testing.specs import group, node, rejects, spec

KIND = workflow_pb2.GroupPolicy


# ---- accepted shapes -------------------------------------------------------------------------


def test_sequence_has_one_root_and_one_sink_and_counts_predecessors():
    plan = compile_spec(spec(["a", "b", "c"], ["a>b", "b>c"]))
    assert plan.roots == ("a",)
    assert plan.sinks == ("c",)
    assert [plan.nodes[n].preds for n in "abc"] == [0, 1, 1]
    assert plan.nodes["a"].successors == ("b",)
    assert plan.task("c").input_node_ids == ("b",)


def test_diamond_joins_both_branches():
    plan = compile_spec(spec(["a", "b", "c", "d"], ["a>b", "a>c", "b>d", "c>d"]))
    assert plan.nodes["d"].preds == 2
    assert set(plan.task("d").input_node_ids) == {"b", "c"}
    assert plan.nodes["a"].successors == ("b", "c")
    assert plan.sinks == ("d",)


def test_several_roots_are_all_released():
    plan = compile_spec(spec(["x", "y", "z"], ["x>z", "y>z"]))
    assert plan.roots == ("x", "y")


def test_group_becomes_a_join_node_with_member_edges_and_fanned_out_inputs():
    plan = compile_spec(spec(["a", "b", "c", "d"], ["a>g", "g>d"], [group("g", ["b", "c"])]))
    g = plan.nodes["g"]
    assert g.kind is NodeKind.GROUP and g.preds == 2 and g.successors == ("d",)
    assert g.policy is JoinPolicy.STRICT
    assert plan.nodes["a"].successors == ("b", "c")
    assert plan.nodes["b"].successors == ("g",)
    assert plan.nodes["d"].preds == 1
    assert plan.task("d").input_node_ids == ("b", "c")
    assert plan.task("b").input_node_ids == ("a",)


def test_group_to_group_edge_fans_out_to_the_second_groups_members_with_inputs_expanded():
    plan = compile_spec(
        spec(["a", "b", "c", "d"], ["g1>g2"], [group("g1", ["a", "b"]), group("g2", ["c", "d"])])
    )
    assert plan.roots == ("a", "b")
    assert plan.nodes["g1"].successors == ("c", "d")
    assert plan.task("c").input_node_ids == ("a", "b")
    assert plan.sinks == ("c", "d")


def test_sink_group_contributes_its_members_as_sinks():
    plan = compile_spec(spec(["a", "b", "c"], ["a>g"], [group("g", ["b", "c"])]))
    assert plan.sinks == ("b", "c")


def test_unspecified_group_policy_is_strict_and_others_keep_their_parameters():
    plan = compile_spec(
        spec(
            ["a", "b", "c"],
            [],
            [
                group("g1", ["a"], KIND.KIND_UNSPECIFIED),
                group("g2", ["b", "c"], KIND.KIND_AT_LEAST_N, min_success=1),
                group("g3", ["b", "c"], KIND.KIND_CRITICAL, critical=["c"]),
            ],
        )
    )
    assert plan.nodes["g1"].policy is JoinPolicy.STRICT
    assert (plan.nodes["g2"].policy, plan.nodes["g2"].min_success) == (JoinPolicy.AT_LEAST_N, 1)
    assert plan.nodes["g3"].critical_ids == frozenset({"c"})


def test_repeated_edges_count_once():
    plan = compile_spec(spec(["a", "b"], ["a>b", "a>b"]))
    assert plan.nodes["b"].preds == 1


def test_task_options_fall_back_to_run_defaults_then_builtins():
    defaults = workflow_pb2.RunDefaults(
        queue="batch", timeout_ms=500, retry=common_pb2.RetryPolicy(max_attempts=3, initial_interval_ms=10)
    )
    own = node("b", queue="gpu", timeout_ms=7, priority=5, retry=common_pb2.RetryPolicy(max_attempts=1))
    plan = compile_spec(spec(["a", own], defaults=defaults))
    a, b = plan.task("a"), plan.task("b")
    assert (a.queue, a.timeout_ms, a.retry) == ("batch", 500, RetryConfig(3, 10, 2.0, 0, 0.0))
    assert (b.queue, b.timeout_ms, b.priority, b.retry.max_attempts) == ("gpu", 7, 5, 1)
    assert compile_spec(spec(["a"])).task("a").queue == "default"
    assert compile_spec(spec(["a"])).task("a").retry == RetryConfig()


def test_closure_lists_successors_and_group_successors_recursively():
    plan = compile_spec(
        spec(
            ["a", "b", "c", "d"], ["a>g", "g>d"], [group("g", ["b", "c"], KIND.KIND_CRITICAL, critical=["b"])]
        )
    )
    assert json.loads(plan.closure_json("a", failed=False)) == [
        {"i": "b", "k": "t", "p": 1},
        {"i": "c", "k": "t", "p": 1},
    ]
    assert json.loads(plan.closure_json("b", failed=True)) == [
        {
            "i": "g",
            "k": "g",
            "p": 2,
            "u": 1,
            "pol": "critical",
            "n": 0,
            "c": 1,
            "m": ["b", "c"],
            "s": [{"i": "d", "k": "t", "p": 1}],
        }
    ]
    assert "m" not in json.loads(plan.closure_json("b", failed=False))[0]
    assert json.loads(plan.closure_json("c", failed=False))[0]["c"] == 0


def test_members_of_a_fan_out_share_one_encoded_closure_and_flow():
    members = [f"m{i}" for i in range(3)]
    plan = compile_spec(spec(["a", *members, "z"], ["a>g", "g>z"], [group("g", members)]))
    closures = {id(plan.closure_json(m, failed=False)) for m in members}
    flows = {id(plan.flow_json(m)) for m in members}
    assert len(closures) == 1 and len(flows) == 1
    assert json.loads(plan.closure_json("m2", failed=False)) == [
        {"i": "g", "k": "g", "p": 3, "u": 1, "pol": "strict", "n": 0, "c": 0,
         "s": [{"i": "z", "k": "t", "p": 1}]}
    ]
    assert plan.closure_json("m0", failed=True) != plan.closure_json("m0", failed=False)
    assert json.loads(plan.flow_json("m1")) == {"ms": plan.max_steps, "mc": plan.task("m1").max_cycles}


# ---- rejections --------------------------------------------------------------------------------


def test_empty_graph_is_rejected():
    rejects(spec([]), "no nodes")


def test_duplicate_node_ids_are_rejected():
    rejects(spec(["a", "a"]), "duplicate id 'a'")


def test_group_id_clashing_with_a_node_is_rejected():
    rejects(spec(["a", "b"], [], [group("a", ["b"])]), "duplicate id 'a'", "node and a group")


@pytest.mark.parametrize("bad", ["", "has space", "x" * 129, "a/b", "naïve"])
def test_bad_id_syntax_is_rejected(bad):
    rejects(spec([node(bad, "t")]), "is invalid")


def test_edge_to_unknown_id_is_rejected():
    rejects(spec(["a"], ["a>ghost"]), "'ghost'", "names no node or group")


def test_edge_from_unknown_id_is_rejected():
    rejects(spec(["a"], ["ghost>a"]), "from_id 'ghost'")


def test_self_edge_is_rejected():
    rejects(spec(["a"], ["a>a"]), "self edge on 'a'")


def test_cycle_is_rejected_naming_its_nodes():
    message = rejects(spec(["a", "b", "c", "d"], ["a>b", "b>c", "c>d", "d>b"]), "cycle")
    assert "b -> c -> d -> b" in message


def test_cycle_through_a_group_is_rejected():
    rejects(spec(["a", "b", "c"], ["g>c", "c>a"], [group("g", ["a", "b"])]), "cycle: a -> g -> c -> a")


def test_member_preceding_its_own_group_is_rejected():
    rejects(spec(["a", "b"], ["a>g"], [group("g", ["a", "b"])]), "'a' is a member of group 'g'")


def test_group_without_members_is_rejected():
    rejects(spec(["a"], [], [group("g", [])]), "group 'g' has no members")


def test_group_with_unknown_member_is_rejected():
    rejects(spec(["a"], [], [group("g", ["a", "zz"])]), "unknown member 'zz'")


def test_group_listing_a_group_as_member_is_rejected():
    rejects(spec(["a"], [], [group("g", ["a"]), group("h", ["g"])]), "members must be task nodes")


def test_critical_ids_that_are_not_members_are_rejected():
    rejects(
        spec(["a", "b"], [], [group("g", ["a"], KIND.KIND_CRITICAL, critical=["b"])]),
        "critical_ids 'b' are not members",
    )


@pytest.mark.parametrize("min_success", [0, 3])
def test_at_least_n_outside_one_to_members_is_rejected(min_success):
    rejects(
        spec(["a", "b"], [], [group("g", ["a", "b"], KIND.KIND_AT_LEAST_N, min_success=min_success)]),
        f"min_success is {min_success}",
        "between 1 and the number of members (2)",
    )


def test_missing_task_type_is_rejected():
    rejects(spec([workflow_pb2.NodeSpec(id="a")]), "node 'a' has no task_type")


@pytest.mark.parametrize(
    "args, problem",
    [
        (b"[1, 2]", "must be a JSON object"),
        (b"{nope", "not valid JSON"),
        (b'{"x": NaN}', "not valid JSON"),
        (b'{"x": 1e400}', "1e400 is not a finite number"),
        (b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested deeper than 64 levels"),
        (b'{"x": "\xff"}', "not valid UTF-8"),
    ],
)
def test_bad_args_are_rejected(args, problem):
    rejects(spec([node("a", args_json=args)]), "node 'a'", problem)


def test_args_over_the_size_limit_are_rejected():
    big = b'{"x": "' + b"y" * 100 + b'"}'
    rejects(
        spec([node("a", args_json=big)]),
        "args_json is 109 bytes; the limit is 50",
        limits=Limits(max_args_bytes=50),
    )


def test_more_nodes_than_the_limit_are_rejected():
    rejects(spec(["a", "b", "c"]), "3 nodes and groups; the limit is 2", limits=Limits(max_nodes=2))


@pytest.mark.parametrize(
    "retry, problem",
    [
        (common_pb2.RetryPolicy(max_attempts=101), "max_attempts is 101"),
        (common_pb2.RetryPolicy(backoff_factor=0.5), "backoff_factor is 0.5"),
        (common_pb2.RetryPolicy(jitter=1.5), "jitter is 1.5"),
        (common_pb2.RetryPolicy(jitter=-0.1), "jitter is -0.1"),
    ],
)
def test_bad_retry_policies_are_rejected(retry, problem):
    rejects(spec([node("a", retry=retry)]), "node 'a': retry", problem)
    rejects(spec(["a"], defaults=workflow_pb2.RunDefaults(retry=retry)), "defaults.retry", problem)


@pytest.mark.parametrize("queue", ["has space", "line\nbreak", "tab\t"])
def test_queue_names_with_whitespace_are_rejected(queue):
    rejects(spec([node("a", queue=queue)]), "queue", "without whitespace")
    rejects(spec(["a"], defaults=workflow_pb2.RunDefaults(queue=queue)), "defaults.queue")


def test_stored_graphs_compile_without_size_limits():
    big = spec([node("a", args_json=b'{"x": "' + b"y" * 100 + b'"}')])
    assert compile_spec(big, None).task("a").args_json.startswith(b'{"x"')
