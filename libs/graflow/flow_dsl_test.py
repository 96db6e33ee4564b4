"""Dynamic control flow in the SDK: loop edges in the DSL, directives recorded by TaskContext,
cooperative cancellation."""

from __future__ import annotations

import json
import threading

import pytest

from graflow import (
    Channel,
    RetryPolicy,
    TaskCanceledError,
    TaskContext,
    WorkflowDefinitionError,
    task,
    workflow,
)


@task
def agent(tool: str = "") -> str:
    return tool


@task
def tool(agent: str) -> str:
    return agent


@task(retry=RetryPolicy(max_attempts=4), queue="gpu", max_cycles=7)
def search(query: str) -> str:
    return query


def edges(wf):  # type: ignore[no-untyped-def]
    return {(e.from_id, e.to_id): e.loop for e in wf.spec().edges}


def context(**fields: object) -> TaskContext:
    values: dict[str, object] = {
        "run_id": "r1",
        "node_id": "agent",
        "task_type": "agent",
        "attempt": 1,
        "max_attempts": 1,
        "worker_id": "w1",
        "channel": Channel(None),  # type: ignore[arg-type]
    }
    values.update(fields)
    return TaskContext(**values)  # type: ignore[arg-type]


def test_the_edge_that_closes_a_cycle_is_marked_as_a_loop():
    with workflow("w") as wf:
        agent >> tool >> agent
    assert edges(wf) == {("agent", "tool"): False, ("tool", "agent"): True}


def test_a_longer_cycle_is_marked_at_its_closing_edge_only():
    with workflow("w") as wf:
        start = tool(task_id="start", agent="go")
        start >> agent >> tool
        tool >> agent
    marked = edges(wf)
    assert marked[("tool", "agent")] is True
    assert not any(loop for pair, loop in marked.items() if pair != ("tool", "agent"))


def test_a_cycle_through_a_group_can_not_be_a_loop():
    with workflow("w"), pytest.raises(WorkflowDefinitionError, match="from a task to a task"):
        agent >> (tool | search) >> agent


def test_next_task_records_the_task_type_arguments_and_options():
    ctx = context()
    assert ctx.next_task(search, query="weather") is None
    assert ctx.next_task(search(task_id="s2", query="news"), goto=True) == "s2"
    first, second = (d.next_task for d in ctx.directives)
    assert (first.node_id, first.task_type, json.loads(first.args_json), first.goto) == (
        "", "search", {"query": "weather"}, False
    )
    assert (first.options.queue, first.options.retry.max_attempts, first.options.max_cycles) == ("gpu", 4, 7)
    assert first.options.id == "" and first.options.task_type == ""
    assert (second.node_id, json.loads(second.args_json), second.goto) == ("s2", {"query": "news"}, True)


def test_goto_iteration_terminate_and_cancel_are_recorded_in_order():
    ctx = context(cycle=2, max_cycles=3)
    ctx.goto("tool")
    ctx.goto(tool)
    ctx.next_iteration({"score": 0.5})
    ctx.terminate_workflow("done")
    kinds = [d.WhichOneof("kind") for d in ctx.directives]
    assert kinds == ["goto", "goto", "next_iteration", "terminate"]
    assert json.loads(ctx.directives[2].next_iteration.data_json) == {"score": 0.5}
    assert (ctx.cycle_count, ctx.can_iterate()) == (2, True)
    assert not context(cycle=3, max_cycles=3).can_iterate()


def test_unserializable_iteration_data_is_rejected_at_the_call():
    from graflow import PayloadError

    with pytest.raises(PayloadError):
        context().next_iteration(object())


def test_cancellation_is_observed_through_the_shared_event_or_cancel_workflow():
    event = threading.Event()
    ctx = context(cancel_event=event)
    assert not ctx.is_canceled()
    ctx.check_canceled()
    event.set()
    assert ctx.is_canceled()
    with pytest.raises(TaskCanceledError, match="r1 was canceled"):
        ctx.check_canceled()
    own = context()
    own.cancel_workflow("stop")
    assert own.is_canceled()
    assert own.directives[0].cancel.message == "stop"
