"""Loop edges (EdgeSpec.loop), max_steps and re-run bookkeeping: the compiler's rules, and runs
of looping graphs through apply_outcome against a real Redis."""

import pytest

from graflow_api.v1 import workflow_pb2
from graflow_runtime import keys

from graflow_scheduler.errors import SpecError
from graflow_scheduler.graph.compiler import compile_spec
from graflow_scheduler.graph.plan import DEFAULT_MAX_STEPS
from graflow_scheduler.testing.flows import FlowRun, loop_edge, next_task, ready, terminate
from graflow_scheduler.testing.specs import group, node, spec


def looped(nodes, edges, loops, **kwargs):  # type: ignore[no-untyped-def]
    built = spec(nodes, edges, **kwargs)
    built.edges.extend(loop_edge(*pair.split(">")) for pair in loops)
    return built


def test_a_cycle_without_a_loop_edge_is_rejected_and_the_message_says_how_to_mark_it():
    with pytest.raises(SpecError, match=r"cycle: a -> b -> a; .*EdgeSpec\.loop"):
        compile_spec(spec(["a", "b"], ["a>b", "b>a"]))


def test_a_loop_edge_makes_the_cycle_a_loop_with_its_body():
    edges = ["start>agent", "agent>tool", "tool>check"]
    plan = compile_spec(looped(["start", "agent", "tool", "check"], edges, ["check>agent"]))
    (loop,) = plan.nodes["check"].loops
    assert (loop.head, loop.body) == ("agent", ("tool", "check"))
    assert "tool:ok" in loop.clear and "check<tool" in loop.clear
    assert plan.roots == ("start",)
    assert plan.nodes["agent"].preds == 1  # the loop edge is not part of the head's join
    assert plan.sinks == ("check",)


def test_a_loop_edge_that_closes_no_cycle_is_rejected():
    with pytest.raises(SpecError, match="closes no cycle"):
        compile_spec(looped(["a", "b"], ["a>b"], ["a>b"]))


def test_a_loop_edge_from_a_group_is_rejected():
    with pytest.raises(SpecError, match="from a task node to a task node"):
        compile_spec(looped(["a", "b", "c"], ["a>g"], ["g>a"], groups=[group("g", ["b", "c"])]))


def test_max_steps_and_max_cycles_defaults():
    plan = compile_spec(spec(["a", node("b", max_cycles=3)], defaults=workflow_pb2.RunDefaults(max_cycles=7)))
    assert (plan.max_steps, plan.task("a").max_cycles, plan.task("b").max_cycles) == (DEFAULT_MAX_STEPS, 7, 3)
    assert compile_spec(spec(["a"])).task("a").max_cycles == 100
    big = compile_spec(spec([f"n{i}" for i in range(DEFAULT_MAX_STEPS + 5)]))
    assert big.max_steps == DEFAULT_MAX_STEPS + 5
    assert compile_spec(spec(["a"], defaults=workflow_pb2.RunDefaults(max_steps=9))).max_steps == 9


async def test_a_loop_runs_its_head_again_after_each_pass_until_a_task_ends_it(store):
    run = await FlowRun.create(store, looped(["agent", "tool"], ["agent>tool"], ["tool>agent"]))
    assert ready(await run.finish("agent")) == ["tool"]
    second = await run.finish("tool")
    assert second.ready == (("agent", 2),)
    assert second.cycles["agent"].cycle == 1
    assert (await run.states())["tool"] == "PENDING"
    third = await run.finish("agent")
    assert third.ready == (("tool", 2),)
    assert third.cycles["tool"].cycle == 1
    await run.finish("tool")
    done = await run.finish("agent", terminate("answer found"))
    assert done.run_status == "SUCCEEDED"
    assert (await run.states())["tool"] == "SKIPPED"


async def test_leaving_a_loop_with_next_task_goto_ends_the_run_after_the_new_node(store):
    run = await FlowRun.create(store, looped(["agent", "tool"], ["agent>tool"], ["tool>agent"]))
    await run.finish("agent")
    await run.finish("tool")
    assert ready(await run.finish("agent", next_task("t_summary", goto=True))) == ["agent.next.1"]
    assert (await run.finish("agent.next.1")).run_status == "SUCCEEDED"
    assert (await run.states())["tool"] == "SKIPPED"


async def test_a_loop_over_its_step_budget_fails_the_run_with_max_steps_exceeded(store):
    run = await FlowRun.create(
        store,
        looped(
            ["agent", "tool"], ["agent>tool"], ["tool>agent"], defaults=workflow_pb2.RunDefaults(max_steps=3)
        ),
    )
    await run.finish("agent")  # step 1: tool
    await run.finish("tool")  # step 2: agent again
    await run.finish("agent")  # step 3: tool again
    result = await run.finish("tool")  # would be step 4
    assert result.run_status == "FAILED"
    error = await run.error()
    assert error.type == "MaxStepsExceeded" and "max_steps 3" in error.message
    assert (await run.meta())["failed_node"] == b"tool"


async def test_a_loop_bounded_by_the_head_max_cycles(store):
    graph = looped([node("agent", max_cycles=1), "tool"], ["agent>tool"], ["tool>agent"])
    run = await FlowRun.create(store, graph)
    await run.finish("agent")
    await run.finish("tool")
    await run.finish("agent")
    result = await run.finish("tool")
    assert result.run_status == "FAILED"
    assert (await run.error()).type == "CycleLimitExceeded"


async def test_a_join_inside_a_loop_waits_for_all_its_predecessors_on_every_pass(store):
    run = await FlowRun.create(
        store, looped(["head", "x", "y", "tail"], ["head>x", "head>y", "x>tail", "y>tail"], ["tail>head"])
    )
    for _ in range(2):
        await run.finish("head")
        assert ready(await run.finish("x")) == []
        assert ready(await run.finish("y")) == ["tail"]
        assert ready(await run.finish("tail")) == ["head"]


async def test_a_new_cycle_gets_a_fresh_retry_budget(store):
    run = await FlowRun.create(store, looped(["agent", "tool"], ["agent>tool"], ["tool>agent"]))
    await run.finish("agent")
    await run.finish("tool")
    # agent's second cycle starts at attempt 2: attempt 1 no longer counts against its retries.
    assert await store.lost_attempts([(run.run_id, "agent")]) == {(run.run_id, "agent"): 1}
    assert await store.redis.hget(keys.run_cycles(run.run_id), "agent") == b"1"
