"""What a client needs to wait for a run cheaply: ``WatchRunRequest.types`` (only some events, e.g.
just the terminal one) and the sinks in ``SubmitRunResponse`` (so a success needs no GetRun)."""

import asyncio

from graflow_api.v1 import scheduler_pb2

from graflow_scheduler.testing.app import report
from graflow_scheduler.testing.specs import group, node, outcome, spec

EVENT = scheduler_pb2.RunEvent
TERMINAL = [EVENT.TYPE_RUN_SUCCEEDED, EVENT.TYPE_RUN_FAILED, EVENT.TYPE_RUN_CANCELED]
CHAIN = spec(["a", "b"], ["a>b"])


async def submit(client, workflow=CHAIN, **kwargs):
    return await client.SubmitRun(scheduler_pb2.SubmitRunRequest(spec=workflow, **kwargs))


async def watch(client, run_id, types, cursor=""):
    call = client.WatchRun(scheduler_pb2.WatchRunRequest(run_id=run_id, cursor=cursor, types=types))
    return [event async for event in call]


async def test_watching_only_terminal_events_sends_just_the_run_end(client, redis):
    run_id = (await submit(client)).run_id
    watcher = asyncio.create_task(watch(client, run_id, TERMINAL))
    await report(redis, outcome(run_id, "a"), outcome(run_id, "b"))
    events = await asyncio.wait_for(watcher, 10)
    assert [(e.type, e.run_id) for e in events] == [(EVENT.TYPE_RUN_SUCCEEDED, run_id)]
    everything = await watch(client, run_id, [])
    assert events[0] == everything[-1]  # same event, same cursor
    # An ended run answers at once.
    assert await asyncio.wait_for(watch(client, run_id, TERMINAL), 10) == events


async def test_a_filter_without_the_terminal_event_still_ends_with_the_run(client, redis):
    run_id = (await submit(client)).run_id
    watcher = asyncio.create_task(watch(client, run_id, [EVENT.TYPE_NODE_SUCCEEDED]))
    await report(redis, outcome(run_id, "a"), outcome(run_id, "b"))
    events = await asyncio.wait_for(watcher, 10)
    assert [(e.type, e.node_id) for e in events] == [
        (EVENT.TYPE_NODE_SUCCEEDED, "a"),
        (EVENT.TYPE_NODE_SUCCEEDED, "b"),
    ]
    # Resuming after the first one skips it.
    assert await watch(client, run_id, [EVENT.TYPE_NODE_SUCCEEDED], cursor=events[0].cursor) == events[1:]


async def test_a_failed_run_ends_a_terminal_watch_with_its_failure(client, redis):
    run_id = (await submit(client)).run_id
    watcher = asyncio.create_task(watch(client, run_id, TERMINAL))
    await report(redis, outcome(run_id, "a", ok=False))
    [event] = await asyncio.wait_for(watcher, 10)
    assert (event.type, event.node_id) == (EVENT.TYPE_RUN_FAILED, "a")


async def test_submit_reports_the_sinks_of_the_run(client):
    etl = spec(
        ["fetch", "clean", "enrich", "report"], ["fetch>g", "g>report"], [group("g", ["clean", "enrich"])]
    )
    first = await submit(client, etl, idempotency_key="k1")
    assert list(first.sink_node_ids) == ["report"]
    again = await submit(client, etl, idempotency_key="k1")
    assert (again.created, list(again.sink_node_ids)) == (False, ["report"])
    # The key names a run of another graph: its sinks are not known from this request.
    other = await submit(client, spec([node("x")]), idempotency_key="k1")
    assert (other.run_id, other.created, list(other.sink_node_ids)) == (first.run_id, False, [])
    assert list((await submit(client, spec(["p", "q"]))).sink_node_ids) == ["p", "q"]
