"""Dynamic control flow through the outcome consumer and the API: envelopes of added nodes and
re-runs, run details of dynamic nodes, canceled runs announced to the workers (gf:ended)."""

import json

from graflow_api.v1 import common_pb2, messages_pb2, scheduler_pb2
from graflow_runtime.graphs import graph_hash

from graflow_scheduler.testing.app import report, run_end, submit
from graflow_scheduler.testing.enqueued import enqueued, wait_enqueued
from graflow_scheduler.testing.flows import FlowRun, iterate, next_task
from graflow_scheduler.testing.runs import runs_ended
from graflow_scheduler.testing.specs import node, outcome, spec


def with_directives(run_id, node_id, *directives, attempt=1):  # type: ignore[no-untyped-def]
    result = outcome(run_id, node_id, attempt)
    result.directives.extend(directives)
    return result


async def test_an_added_node_is_dispatched_with_its_task_type_arguments_and_parent_as_input(
    client, downstreams, redis
):
    run_id = await submit(client, spec(["a", "b"], ["a>b"]))
    await report(redis, with_directives(run_id, "a", next_task("t_tool", query="weather")))
    await wait_enqueued(redis, lambda c: c.envelopes(run_id, "a.next.1"))
    (added,) = (await enqueued(redis)).envelopes(run_id, "a.next.1")
    assert (added.envelope.task_type, added.envelope.attempt) == ("t_tool", 1)
    assert json.loads(added.envelope.args_json) == {"query": "weather"}
    assert list(added.envelope.input_node_ids) == ["a"]
    assert added.envelope.max_cycles == 100
    await report(redis, outcome(run_id, "a.next.1"))
    await wait_enqueued(redis, lambda c: c.envelopes(run_id, "b"))
    await report(redis, outcome(run_id, "b"))
    assert await run_end(client, run_id) == "TYPE_RUN_SUCCEEDED"
    info = await client.GetRun(scheduler_pb2.GetRunRequest(run_id=run_id))
    dynamic = {n.node_id: n for n in info.nodes}["a.next.1"]
    assert (dynamic.kind, dynamic.task_type, dynamic.added_by) == ("task", "t_tool", "a")
    assert [n.node_id for n in info.nodes] == ["a", "b", "a.next.1"]


async def test_next_iteration_is_dispatched_with_the_cycle_and_the_data(client, downstreams, redis):
    run_id = await submit(client, spec([node("refine", max_cycles=5)]))
    await report(redis, with_directives(run_id, "refine", iterate({"draft": 2})))
    await wait_enqueued(redis, lambda c: len(c.envelopes(run_id, "refine")) == 2)
    again = (await enqueued(redis)).envelopes(run_id, "refine")[1].envelope
    assert (again.attempt, again.cycle, again.max_cycles) == (2, 1, 5)
    assert json.loads(again.iteration_data_json) == {"draft": 2}
    await report(redis, outcome(run_id, "refine", attempt=2))
    assert await run_end(client, run_id) == "TYPE_RUN_SUCCEEDED"
    info = await client.GetRun(scheduler_pb2.GetRunRequest(run_id=run_id))
    assert (info.nodes[0].cycle, info.nodes[0].attempt) == (1, 2)


async def test_an_invalid_directive_fails_the_node_without_retry(client, downstreams, redis):
    retry = common_pb2.RetryPolicy(max_attempts=3)
    run_id = await submit(client, spec([node("a", retry=retry)]))
    bad = messages_pb2.Directive(next_task=messages_pb2.NextTask(task_type="has space"))
    await report(redis, with_directives(run_id, "a", bad))
    assert await run_end(client, run_id) == "TYPE_RUN_FAILED"
    info = await client.GetRun(scheduler_pb2.GetRunRequest(run_id=run_id))
    assert info.error.type == "InvalidDirective"
    assert "task_type" in info.error.message


async def test_cancel_run_and_cancel_from_a_task_are_announced_to_the_workers_with_the_end(
    client, downstreams, redis
):
    first = await submit(client, spec(["a", "b"], ["a>b"]))
    await client.CancelRun(scheduler_pb2.CancelRunRequest(run_id=first, reason="no longer needed"))
    # Written by the script that ended the run: there when CancelRun returns.
    assert await runs_ended(redis) == [(first, "CANCELED")]
    second = await submit(client, spec(["a", "b"], ["a>b"]))
    cancel = messages_pb2.Directive(cancel=messages_pb2.Cancel(message="the task gave up"))
    await report(redis, with_directives(second, "a", cancel))
    assert await run_end(client, second) == "TYPE_RUN_CANCELED"
    assert await runs_ended(redis) == [(first, "CANCELED"), (second, "CANCELED")]
    info = await client.GetRun(scheduler_pb2.GetRunRequest(run_id=second))
    assert info.message == "the task gave up"


async def test_the_recovery_sweep_redispatches_added_nodes_and_re_runs_with_their_cycle_and_data(
    app, store, downstreams, redis
):
    await app.sweep.stop()  # sweep by hand below
    workflow = spec(["a", "b"], ["a>b"])
    downstreams.result_store.graphs[graph_hash(workflow)] = workflow
    run = await FlowRun.create(store, workflow)
    await run.finish("a", next_task("t_tool", query="x"))
    await run.finish("a.next.1", iterate({"round": 2}))
    assert await app.sweep.sweep_once() == 1
    sent_to_run = [q.envelope for q in (await enqueued(redis)).deliveries if q.envelope.run_id == run.run_id]
    assert len(sent_to_run) == 1
    sent = sent_to_run[0]
    assert (sent.node_id, sent.task_type, sent.attempt, sent.cycle) == ("a.next.1", "t_tool", 2, 1)
    assert json.loads(sent.iteration_data_json) == {"round": 2}
    assert json.loads(sent.args_json) == {"query": "x"}
