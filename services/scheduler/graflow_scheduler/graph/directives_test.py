"""Task directives applied by apply_outcome against a real Redis: next_task, goto, next_iteration,
terminate, cancel; idempotency, cycle limits, invalid directives."""

import json

import pytest

from graflow_api.v1 import messages_pb2, workflow_pb2
from graflow_runtime import keys

from graflow_scheduler.testing.flows import FlowRun, cancel, goto, iterate, next_task, ready, terminate
from graflow_scheduler.testing.specs import group, node, spec


async def test_next_task_adds_a_node_that_runs_before_the_static_successors(store):
    run = await FlowRun.create(store, spec(["a", "b"], ["a>b"]))
    result = await run.finish("a", next_task("t_x", item=3))
    assert ready(result) == ["a.next.1"]
    assert result.added == {0: "a.next.1"}
    assert (await run.states())["b"] == "PENDING"
    assert await run.events("NODE_ADDED") == [("a.next.1", "task 't_x' added by 'a'")]
    stored = json.loads(await store.redis.hget(keys.run_dynamic(run.run_id), "a.next.1"))
    assert (stored["parent"], stored["cont"]) == ("a", "a")
    # The new node's outcome releases a's successor.
    assert ready(await run.finish("a.next.1")) == ["b"]
    assert (await run.finish("b")).run_status == "SUCCEEDED"


async def test_static_successors_wait_for_every_added_node_and_the_nodes_they_add(store):
    run = await FlowRun.create(store, spec(["a", "b"], ["a>b"]))
    await run.finish("a", next_task("t_x"), next_task("t_y", "custom"))
    assert ready(await run.finish("custom")) == []
    # a.next.1 adds one more node: b now waits for it instead.
    assert ready(await run.finish("a.next.1", next_task("t_z"))) == ["a.next.2"]
    assert (await run.states())["b"] == "PENDING"
    assert ready(await run.finish("a.next.2")) == ["b"]


async def test_a_redelivered_outcome_adds_nothing_twice_and_repeats_the_dispatch(store):
    run = await FlowRun.create(store, spec(["a", "b"], ["a>b"]))
    first = await run.finish("a", next_task("t_x"))
    again = await run.finish("a", next_task("t_x"), attempt=1)
    assert (again.code, ready(again)) == ("duplicate", ready(first))
    states = await run.states()
    assert sorted(states) == ["a", "a.next.1", "b"]
    assert (await run.meta())["pending"] == b"2"


async def test_next_task_with_goto_skips_the_static_successors(store):
    run = await FlowRun.create(store, spec(["a", "b", "c"], ["a>b", "b>c"]))
    result = await run.finish("a", next_task("t_x", goto=True))
    assert ready(result) == ["a.next.1"]
    assert (await run.states())["b"] == "SKIPPED"
    assert await run.events("NODE_SKIPPED") == [("b", "'a' jumped elsewhere")]
    # c waited for b, which will not run: once nothing is READY the run ends without it.
    done = await run.finish("a.next.1")
    assert done.run_status == "SUCCEEDED"
    assert (await run.states())["c"] == "SKIPPED"


async def test_goto_runs_an_existing_node_again_as_a_new_cycle(store):
    run = await FlowRun.create(store, spec(["agent", "tool", "report"], ["agent>report"]))
    await run.finish("tool")
    result = await run.finish("agent", goto("tool"))
    assert result.ready == (("tool", 2),)
    assert result.cycles["tool"].cycle == 1
    assert (await run.states())["report"] == "SKIPPED"
    # tool jumps back; agent's last pass ends normally and brings its successor back.
    await run.finish("tool", goto("agent"))
    assert await run.attempt("agent") == 2  # the attempt counter continues
    assert ready(await run.finish("agent")) == ["report"]
    assert (await run.finish("report")).run_status == "SUCCEEDED"
    assert (await run.meta())["steps"] == b"3"


async def test_next_iteration_runs_the_node_again_with_its_data_then_releases_successors(store):
    run = await FlowRun.create(store, spec(["refine", "publish"], ["refine>publish"]))
    first = await run.finish("refine", iterate({"score": 0.4}))
    assert first.ready == (("refine", 2),)
    assert (first.cycles["refine"].cycle, json.loads(first.cycles["refine"].data_json)) == (1, {"score": 0.4})
    assert (await run.states())["publish"] == "PENDING"
    second = await run.finish("refine", iterate({"score": 0.8}))
    assert second.cycles["refine"].cycle == 2
    assert ready(await run.finish("refine")) == ["publish"]


async def test_exceeding_max_cycles_fails_the_node_with_a_cycle_limit_error(store):
    run = await FlowRun.create(store, spec([node("loop", max_cycles=2)]))
    await run.finish("loop", iterate(1))
    await run.finish("loop", iterate(2))
    result = await run.finish("loop", iterate(3))
    assert result.run_status == "FAILED"
    meta = await run.meta()
    assert meta["failed_node"] == b"loop"
    error = await run.error()
    assert error.type == "CycleLimitExceeded"
    assert "'loop'" in error.message and "max_cycles is 2" in error.message
    assert (await run.states())["loop"] == "FAILED"


async def test_run_default_max_cycles_applies_to_goto_targets(store):
    run = await FlowRun.create(
        store, spec(["a", "b"], defaults=workflow_pb2.RunDefaults(max_cycles=1))
    )
    await run.finish("b")
    await run.finish("a", goto("b"))
    result = await run.finish("b", goto("b"))
    assert result.run_status == "FAILED"
    assert (await run.error()).type == "CycleLimitExceeded"


async def test_terminate_ends_the_run_successfully_and_skips_what_is_left(store):
    run = await FlowRun.create(store, spec(["a", "b", "c", "d"], ["a>c", "c>d"]))
    result = await run.finish("a", terminate("good enough"))
    assert (result.run_status, result.ready) == ("SUCCEEDED", ())
    assert await run.states() == {"a": "SUCCEEDED", "b": "SKIPPED", "c": "SKIPPED", "d": "SKIPPED"}
    assert (await run.meta())["message"] == b"good enough"
    assert await run.events("RUN_SUCCEEDED") == [("a", "good enough")]
    assert (await run.finish("b")).code == "ignored"


async def test_cancel_from_a_task_ends_the_run_canceled_with_its_message(store):
    run = await FlowRun.create(store, spec(["a", "b"], ["a>b"]))
    result = await run.finish("a", next_task("t_x"), cancel("user went away"))
    assert (result.run_status, result.ready) == ("CANCELED", ())
    assert await run.states() == {"a": "SUCCEEDED", "b": "CANCELED"}
    assert (await run.meta())["message"] == b"user went away"


async def test_goto_to_a_node_that_does_not_exist_fails_the_node(store):
    run = await FlowRun.create(store, spec(["a", "b"], ["a>b"]))
    result = await run.finish("a", goto("nowhere"))
    assert result.run_status == "FAILED"
    error = await run.error()
    assert error.type == "InvalidDirective" and "'nowhere'" in error.message
    assert (await run.states())["a"] == "FAILED"


async def test_goto_to_a_group_is_rejected_before_anything_changes(store):
    run = await FlowRun.create(store, spec(["a", "b", "c"], ["a>g"], [group("g", ["b", "c"])]))
    result = await run.finish("a", goto("g"))
    assert result.run_status == "FAILED"
    error = await run.error()
    assert error.type == "InvalidDirective" and "parallel group" in error.message
    assert not error.retryable


async def test_a_failed_added_node_fails_the_run_like_its_parent_would(store):
    run = await FlowRun.create(store, spec(["a", "b"], ["a>b"]))
    await run.finish("a", next_task("t_x"))
    result = await run.finish("a.next.1", ok=False)
    assert result.run_status == "FAILED"
    assert (await run.meta())["failed_node"] == b"a.next.1"


async def test_a_join_counts_a_predecessor_that_ran_twice_once(store):
    run = await FlowRun.create(store, spec(["a", "b", "c", "z"], ["a>c", "b>c"]))
    await run.finish("a")
    await run.finish("z", goto("a"))
    # a's second run succeeds normally: c still waits for b.
    assert ready(await run.finish("a")) == []
    assert (await run.states())["c"] == "PENDING"
    assert ready(await run.finish("b")) == ["c"]


async def test_a_strict_group_member_running_again_is_not_counted_twice(store):
    run = await FlowRun.create(store, spec(["a", "b", "d", "z"], ["g>d"], [group("g", ["a", "b"])]))
    await run.finish("a")
    await run.finish("z", goto("a"))
    assert ready(await run.finish("a")) == []
    assert (await run.states())["g"] == "PENDING"
    assert ready(await run.finish("b")) == ["d"]


@pytest.mark.parametrize(("data", "problem"), [
    (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 64 levels"),
    (b'{"x": 1e400}', "1e400 is not a finite number"),
    (b"NaN", "NaN is not valid JSON"),
])
async def test_next_iteration_data_too_deep_or_not_finite_fails_the_node_only(store, data, problem):
    run = await FlowRun.create(store, spec(["a", "b"], ["a>b"]))
    iteration = messages_pb2.Directive(next_iteration=messages_pb2.NextIteration(data_json=data))
    result = await run.finish("a", iteration)
    assert result.run_status == "FAILED"
    error = await run.error()
    assert error.type == "InvalidDirective" and f"next_iteration data is {problem}" in error.message
