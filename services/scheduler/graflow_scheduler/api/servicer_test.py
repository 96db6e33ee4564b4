"""The Scheduler gRPC API, served by the real server on a free port with a real Redis (where its
dispatches enqueue); the result-store is a recording test double behind a real gRPC server."""

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from graflow_api.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from graflow_runtime import keys
from graflow_runtime.graphs import graph_hash
from graflow_runtime.limits import MAX_QUEUES
from graflow_runtime.runids import new_run_id

from graflow_scheduler.app import RUN_ENDS_CLIENT
from graflow_scheduler.testing.app import app_client, report
from graflow_scheduler.testing.enqueued import enqueued
from graflow_scheduler.testing.specs import group, node, outcome, spec

EVENT = scheduler_pb2.RunEvent
ETL = spec(
    ["fetch", "clean", "enrich", node("report", queue="reports")],
    ["fetch>g", "g>report"],
    [group("g", ["clean", "enrich"])],
    name="etl",
)


async def submit(client, workflow=ETL, **kwargs):
    return await client.SubmitRun(scheduler_pb2.SubmitRunRequest(spec=workflow, **kwargs))


async def watch(client, run_id, cursor=""):
    call = client.WatchRun(scheduler_pb2.WatchRunRequest(run_id=run_id, cursor=cursor))
    return [event async for event in call]


async def test_submit_stores_the_graph_creates_the_run_and_dispatches_the_roots(client, downstreams, redis):
    response = await submit(client)
    assert response.created and len(response.run_id) == 26
    assert response.graph_hash == graph_hash(ETL)
    assert downstreams.result_store.graphs[response.graph_hash] == ETL
    (root,) = (await enqueued(redis)).deliveries
    assert (root.envelope.run_id, root.envelope.node_id, root.envelope.attempt) == (
        response.run_id,
        "fetch",
        1,
    )
    assert (root.envelope.task_type, root.envelope.queue, root.due_ms) == ("t_fetch", "default", 0)
    # In the queue's stream, which has its workers' group, and recorded as dispatched.
    groups = await redis.xinfo_groups(keys.queue_stream("default"))
    assert [g["name"] for g in groups] == [keys.WORKER_GROUP.encode()]
    assert await redis.hget(keys.dispatch_record(response.run_id), "fetch") == b"1"
    assert await redis.hget(keys.run_state(response.run_id), "fetch") == b"READY"


async def test_submitting_the_same_graph_again_stores_it_once(client, downstreams):
    first, second = await submit(client), await submit(client)
    assert first.run_id != second.run_id and first.graph_hash == second.graph_hash
    assert downstreams.result_store.put_calls == 1


async def test_the_same_graph_is_stored_again_once_its_last_store_is_a_keep_alive_old(make_app, downstreams):
    # Stored graphs expire: a process holding the plan must still restart the stored copy's period.
    app = await make_app(results_keepalive_s=0.2)
    async with app_client(app) as client:
        await submit(client)
        await submit(client)
        assert downstreams.result_store.put_calls == 1
        await asyncio.sleep(0.3)
        await submit(client)
        assert downstreams.result_store.put_calls == 2


async def test_invalid_spec_is_rejected_with_the_problem_and_nothing_is_stored(client, downstreams, redis):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await submit(client, spec(["a", "b"], ["a>b", "b>a"]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cycle" in info.value.details()
    assert await redis.keys("gf:run*") == [] and await redis.keys("gf:idem*") == []
    assert downstreams.result_store.put_calls == 0 and (await enqueued(redis)).deliveries == []


async def test_submit_without_spec_is_invalid(client):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.SubmitRun(scheduler_pb2.SubmitRunRequest())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "spec is missing" in info.value.details()


async def test_repeated_submit_with_an_idempotency_key_returns_the_first_run(client, redis):
    first = await submit(client, idempotency_key="nightly-2024-01-01")
    again = await submit(client, idempotency_key="nightly-2024-01-01")
    assert (again.run_id, again.created, again.graph_hash) == (first.run_id, False, first.graph_hash)
    assert (await enqueued(redis)).delivered(first.run_id) == [("fetch", 1)]


async def test_submit_succeeds_when_its_dispatch_fails_and_the_sweep_dispatches_later(client, app, redis):
    await redis.set(keys.queue_stream("default"), "not a stream")  # Redis refuses the queue's group
    response = await submit(client)
    assert response.created and await redis.hget(keys.run_state(response.run_id), "fetch") == b"READY"
    assert not await redis.exists(keys.dispatch_record(response.run_id))
    await redis.delete(keys.queue_stream("default"))
    assert await app.sweep.sweep_once() == 1
    assert (await enqueued(redis)).delivered(response.run_id) == [("fetch", 1)]


async def test_get_run_shows_nodes_with_kind_and_task_type(client):
    response = await submit(client, labels={"owner": "ana"})
    run = await client.GetRun(scheduler_pb2.GetRunRequest(run_id=response.run_id))
    assert (run.workflow_name, run.status, dict(run.labels)) == (
        "etl",
        common_pb2.RUN_STATUS_RUNNING,
        {"owner": "ana"},
    )
    assert [(n.node_id, n.state, n.kind) for n in run.nodes] == [
        ("fetch", common_pb2.NODE_STATE_READY, "task"),
        ("clean", common_pb2.NODE_STATE_PENDING, "task"),
        ("enrich", common_pb2.NODE_STATE_PENDING, "task"),
        ("report", common_pb2.NODE_STATE_PENDING, "task"),
        ("g", common_pb2.NODE_STATE_PENDING, "group"),
    ]
    assert list(run.sink_node_ids) == ["report"]


async def test_get_run_of_an_unknown_id_is_not_found_naming_it(client):
    missing = new_run_id()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.GetRun(scheduler_pb2.GetRunRequest(run_id=missing))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and missing in info.value.details()


async def test_malformed_run_id_is_invalid_argument(client):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.GetRun(scheduler_pb2.GetRunRequest(run_id="../etc"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed" in info.value.details()


async def test_list_runs_returns_newest_first_with_paging_and_status_filter(client):
    ids = [(await submit(client)).run_id for _ in range(3)]
    await client.CancelRun(scheduler_pb2.CancelRunRequest(run_id=ids[0]))
    page = await client.ListRuns(scheduler_pb2.ListRunsRequest(limit=2))
    rest = await client.ListRuns(scheduler_pb2.ListRunsRequest(limit=2, page_token=page.next_page_token))
    assert [r.run_id for r in [*page.runs, *rest.runs]] == sorted(ids, reverse=True)
    assert not page.runs[0].nodes
    canceled = await client.ListRuns(scheduler_pb2.ListRunsRequest(status=common_pb2.RUN_STATUS_CANCELED))
    assert [r.run_id for r in canceled.runs] == [ids[0]]


async def test_list_runs_with_a_bad_page_token_is_invalid(client):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.ListRuns(scheduler_pb2.ListRunsRequest(page_token="%%%"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_runs_with_an_unknown_status_is_invalid_naming_the_field(client):
    """Found by fuzzing: a status that is no RunStatus answered UNKNOWN (a ValueError naming it)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.ListRuns(scheduler_pb2.ListRunsRequest(status=99))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "status 99" in info.value.details() and "RUN_STATUS_RUNNING" in info.value.details()


async def test_cancel_returns_the_canceled_run_and_ended_runs_stay_unchanged(client):
    run_id = (await submit(client)).run_id
    run = await client.CancelRun(scheduler_pb2.CancelRunRequest(run_id=run_id, reason="wrong input"))
    assert (run.status, run.message) == (common_pb2.RUN_STATUS_CANCELED, "wrong input")
    assert {n.state for n in run.nodes} == {common_pb2.NODE_STATE_CANCELED}
    again = await client.CancelRun(scheduler_pb2.CancelRunRequest(run_id=run_id, reason="twice"))
    assert (again.status, again.message, again.ended_at_ms) == (run.status, "wrong input", run.ended_at_ms)


async def test_cancel_of_an_unknown_run_is_not_found(client):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.CancelRun(scheduler_pb2.CancelRunRequest(run_id=new_run_id()))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watch_streams_until_the_run_ends_and_resumes_after_a_cursor(client, redis):
    run_id = (await submit(client, spec(["a", "b"], ["a>b"]))).run_id
    watcher = asyncio.create_task(watch(client, run_id))
    await report(redis, outcome(run_id, "a"))
    await report(redis, outcome(run_id, "b"))
    events = await asyncio.wait_for(watcher, 10)
    assert [(e.type, e.node_id) for e in events] == [
        (EVENT.TYPE_RUN_CREATED, ""),
        (EVENT.TYPE_NODE_READY, "a"),
        (EVENT.TYPE_NODE_SUCCEEDED, "a"),
        (EVENT.TYPE_NODE_READY, "b"),
        (EVENT.TYPE_NODE_SUCCEEDED, "b"),
        (EVENT.TYPE_RUN_SUCCEEDED, ""),
    ]
    assert all(e.run_id == run_id for e in events)
    resumed = await watch(client, run_id, cursor=events[2].cursor)
    assert resumed == events[3:]
    assert await watch(client, run_id, cursor=events[-1].cursor) == []


async def test_watch_rejects_a_malformed_cursor_and_an_unknown_run(client):
    run_id = (await submit(client)).run_id
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await watch(client, run_id, cursor="yesterday")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "cursor" in info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await watch(client, new_run_id())
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def blocked_watchers(redis):
    """Blocked reads of watchers (not the process's one reader of run ends)."""
    return sum(
        1
        for c in await redis.client_list()
        if c["cmd"] == "xread" and "b" in c["flags"] and c["name"] != RUN_ENDS_CLIENT
    )


async def eventually(check, timeout=10.0):
    async def poll():
        while not await check():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


async def test_watch_stops_reading_when_the_client_goes_away(client, redis):
    run_id = (await submit(client)).run_id
    call = client.WatchRun(scheduler_pb2.WatchRunRequest(run_id=run_id))
    assert (await call.read()).type == EVENT.TYPE_RUN_CREATED
    await eventually(lambda: _at_least_one(redis))
    call.cancel()
    await eventually(lambda: _none(redis))


async def _at_least_one(redis):
    return await blocked_watchers(redis) >= 1


async def _none(redis):
    return await blocked_watchers(redis) == 0


async def test_health_reports_serving_for_the_scheduler_service(app):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service="graflow_api.v1.Scheduler"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_calls_while_redis_is_down_fail_with_unavailable(make_app, local_redis):
    app = await make_app(redis_url=local_redis.url)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        local_redis.stop()
        try:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetRun(scheduler_pb2.GetRunRequest(run_id=new_run_id()))
        finally:
            local_redis.start()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Redis" in info.value.details() and "retry" in info.value.details()


async def test_the_watcher_over_max_streams_is_resource_exhausted_and_the_others_go_on(make_app, redis):
    app = await make_app(max_streams=2)
    async with app_client(app) as client:
        run_id = (await submit(client, spec(["a", "b"], ["a>b"]))).run_id
        watchers = [client.WatchRun(scheduler_pb2.WatchRunRequest(run_id=run_id)) for _ in range(2)]
        for call in watchers:
            assert (await call.read()).type == EVENT.TYPE_RUN_CREATED
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await watch(client, run_id)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 streams" in refused.value.details() and "MAX_STREAMS" in refused.value.details()
        # The open watchers see the run to its end; then their slots are free again.
        await report(redis, outcome(run_id, "a"))
        await report(redis, outcome(run_id, "b"))
        for call in watchers:
            rest = await asyncio.wait_for(_rest(call), 10)
            assert rest[-1].type == EVENT.TYPE_RUN_SUCCEEDED
        assert (await watch(client, run_id))[-1].type == EVENT.TYPE_RUN_SUCCEEDED


async def _rest(call):
    events = []
    while (event := await call.read()) is not grpc.aio.EOF:
        events.append(event)
    return events


async def test_a_new_queue_beyond_max_queues_is_resource_exhausted_and_nothing_is_stored(client, redis):
    # Every queue name ever used was a pair of streams for ever: their number is capped.
    await submit(client, spec(["a"]))  # the default queue, registered
    await redis.sadd(keys.QUEUES, *[f"q{i}" for i in range(MAX_QUEUES - 1)])
    runs = await redis.zcard(keys.RUNS_INDEX)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await submit(client, spec([node("a", queue="one-too-many")]))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = info.value.details()
    assert "'one-too-many'" in details and f"MAX_QUEUES is {MAX_QUEUES:,}" in details
    assert await redis.zcard(keys.RUNS_INDEX) == runs
    assert not await redis.exists(keys.queue_stream("one-too-many"))
    # Queues already in use go on.
    assert (await submit(client, spec([node("b", queue="q7")]))).created
