"""Run creation, cancellation, idempotency, events and reads against a real Redis."""

import pytest

from graflow_api.v1 import common_pb2, scheduler_pb2
from graflow_runtime import keys
from graflow_runtime.runids import new_run_id

from graflow_scheduler.errors import BadPageToken, RunNotFound
from graflow_scheduler.graph.compiler import compile_spec
from graflow_scheduler.state.views import event_from_entry
from graflow_scheduler.testing.runs import RunHarness
from graflow_scheduler.testing.specs import group, spec

DIAMOND = spec(["a", "b", "c", "d"], ["a>b", "a>c", "b>d", "c>d"], name="diamond")


async def no_plan(_graph_hash):
    return None


async def test_create_run_readies_roots_indexes_the_run_and_records_events(store, redis):
    run = await RunHarness.create(store, spec(["x", "y", "z"], ["x>z", "y>z"]), labels={"team": "data"})
    assert await run.states() == {"x": "READY", "y": "READY", "z": "PENDING"}
    meta = await run.meta()
    assert (meta["status"], meta["pending"], meta["labels"]) == (b"RUNNING", b"3", b'{"team":"data"}')
    assert await redis.sismember(keys.ACTIVE_RUNS, run.run_id)
    assert await redis.zscore(keys.RUNS_INDEX, run.run_id) == 1000
    assert await run.events() == [("RUN_CREATED", ""), ("NODE_READY", "x"), ("NODE_READY", "y")]


async def test_same_idempotency_key_returns_the_first_run(store, redis):
    first = await RunHarness.create(store, DIAMOND, idempotency_key="order-42")
    plan = compile_spec(DIAMOND)
    again = await store.create_run(
        plan, run_id=new_run_id(), graph_hash="h", now_ms=5, idempotency_key="order-42"
    )
    assert (again.run_id, again.created) == (first.run_id, False)
    assert await redis.zcard(keys.RUNS_INDEX) == 1
    other = await store.create_run(
        plan, run_id=new_run_id(), graph_hash="h", now_ms=5, idempotency_key="order-43"
    )
    assert other.created and other.run_id != first.run_id


async def test_events_follow_the_order_of_transitions(store):
    run = await RunHarness.create(store, spec(["a", "b", "c"], ["a>g"], [group("g", ["b", "c"])]))
    await run.finish("a")
    await run.finish("b")
    await run.finish("c")
    assert await run.events() == [
        ("RUN_CREATED", ""),
        ("NODE_READY", "a"),
        ("NODE_SUCCEEDED", "a"),
        ("NODE_READY", "b"),
        ("NODE_READY", "c"),
        ("NODE_SUCCEEDED", "b"),
        ("NODE_SUCCEEDED", "c"),
        ("NODE_SUCCEEDED", "g"),
        ("RUN_SUCCEEDED", ""),
    ]


async def test_event_fields_reach_the_run_event_message(store, redis):
    run = await RunHarness.create(store, spec(["a"]))
    await run.finish("a", ok=False, retry_delay_ms=300)
    entry_id, fields = (await redis.xrange(keys.run_events(run.run_id)))[-1]
    event = event_from_entry(run.run_id, entry_id, fields)
    assert event.type == scheduler_pb2.RunEvent.TYPE_NODE_RETRYING
    assert (event.node_id, event.attempt, event.worker_id, event.at_ms) == ("a", 2, "w1", 2000)
    assert event.message == "attempt 1 failed; attempt 2 starts in 300 ms"
    assert event.error.type == "ValueError"
    assert event.cursor == entry_id.decode()


async def test_cancel_ends_a_running_run_and_cancels_its_unfinished_nodes(store, redis):
    run = await RunHarness.create(store, spec(["a", "b"], ["a>b"]))
    assert await store.cancel_run(run.run_id, "user asked", now_ms=3000) == "CANCELED"
    meta = await run.meta()
    assert (meta["status"], meta["message"], meta["ended"]) == (b"CANCELED", b"user asked", b"3000")
    assert await run.states() == {"a": "CANCELED", "b": "CANCELED"}
    assert (await run.events())[-1] == ("RUN_CANCELED", "")
    assert not await redis.sismember(keys.ACTIVE_RUNS, run.run_id)
    assert 0 < await redis.ttl(keys.run_meta(run.run_id)) <= 3600
    assert (await run.finish("a")).code == "ignored"


async def test_cancel_of_an_ended_run_changes_nothing(store):
    run = await RunHarness.create(store, spec(["a"]))
    await run.finish("a")
    events = await run.events()
    assert await store.cancel_run(run.run_id, "too late", now_ms=3000) == "SUCCEEDED"
    assert await run.events() == events


async def test_cancel_of_an_unknown_run_raises_not_found(store):
    with pytest.raises(RunNotFound, match="not found"):
        await store.cancel_run(new_run_id(), "x", now_ms=1)


async def test_ended_run_keys_and_idempotency_key_expire_after_retention(store, redis):
    run = await RunHarness.create(store, spec(["a", "b", "c"], ["a>b", "a>c"]), idempotency_key="k1")
    await run.finish("a")
    await run.finish("b", ok=False)
    for key in [*keys.run_keys(run.run_id), keys.idempotency("k1")]:
        assert 0 < await redis.ttl(key) <= 3600, key


async def test_get_run_returns_meta_nodes_attempts_and_errors(store, reader):
    run = await RunHarness.create(store, spec(["a", "b"], ["a>b"], name="pair"))
    await run.finish("a", ok=False)

    async def plan_lookup(_graph_hash):
        return run.plan

    result = await reader.get_run(run.run_id, plan_lookup)
    assert (result.workflow_name, result.status, result.failed_node_id) == (
        "pair",
        common_pb2.RUN_STATUS_FAILED,
        "a",
    )
    assert result.error.type == "ValueError"
    assert [(n.node_id, n.state, n.attempt, n.kind, n.task_type) for n in result.nodes] == [
        ("a", common_pb2.NODE_STATE_FAILED, 1, "task", "t_a"),
        ("b", common_pb2.NODE_STATE_SKIPPED, 0, "task", "t_b"),
    ]
    assert result.nodes[0].error.message == "a broke"
    assert list(result.sink_node_ids) == ["b"]


async def test_get_run_of_unknown_id_raises_not_found(reader):
    with pytest.raises(RunNotFound):
        await reader.get_run(new_run_id(), no_plan)


async def test_list_runs_pages_newest_first_and_filters_by_status(store, reader):
    plan = compile_spec(spec(["a"]))
    ids = []
    for ms in (100, 200, 200, 300, 400):
        ids.append((await store.create_run(plan, run_id=new_run_id(ms), graph_hash="h", now_ms=ms)).run_id)
    await store.cancel_run(ids[1], "x", now_ms=500)
    newest_first = sorted(ids, reverse=True)
    seen, token = [], ""
    while True:
        page, token = await reader.list_runs(limit=2, status=None, page_token=token)
        seen.extend(r.run_id for r in page)
        if not token:
            break
    assert seen == newest_first
    canceled, _ = await reader.list_runs(limit=10, status="CANCELED", page_token="")
    assert [r.run_id for r in canceled] == [ids[1]]


async def test_list_runs_rejects_a_foreign_page_token(reader):
    with pytest.raises(BadPageToken):
        await reader.list_runs(limit=5, status=None, page_token="not-a-token")


async def test_scripts_are_loaded_again_when_redis_lost_them(store, redis):
    run = await RunHarness.create(store, spec(["a", "b"], ["a>b"]))
    await redis.script_flush()
    assert (await run.finish("a")).ready == (("b", 1),)
    await redis.script_flush()
    assert await store.cancel_run(run.run_id, "done", now_ms=5) == "CANCELED"


async def test_pruning_the_listing_steps_over_runs_still_kept(reader, redis):
    """Old runs still kept (waiting on people for weeks, or ended within a retention) do not stop
    the pruning of expired runs behind them: once, only the ``batch`` oldest entries were looked
    at, and the listing grew for good behind ``batch`` long-lived runs."""
    live = [f"live-{i}" for i in range(5)]
    expired = [f"expired-{i}" for i in range(3)]
    await redis.zadd(keys.RUNS_INDEX, {run_id: score for score, run_id in enumerate(live + expired)})
    for run_id in live:
        await redis.hset(keys.run_meta(run_id), "status", "WAITING")

    assert await reader.prune_index(created_before_ms=100, batch=2) == 3
    assert sorted(m.decode() for m in await redis.zrange(keys.RUNS_INDEX, 0, -1)) == live


async def test_pruning_the_listing_removes_every_expired_run_in_one_pass(reader, redis):
    """More expired runs than one batch, as when runs end faster than ``batch`` per sweep period."""
    await redis.zadd(keys.RUNS_INDEX, {f"r{i}": i for i in range(25)})
    await redis.zadd(keys.RUNS_INDEX, {"young": 500})  # created after the cutoff: not examined

    assert await reader.prune_index(created_before_ms=100, batch=10) == 25
    assert [m.decode() for m in await redis.zrange(keys.RUNS_INDEX, 0, -1)] == ["young"]


async def test_pruning_the_listing_prunes_the_status_indexes_too(reader, redis):
    await redis.zadd(keys.RUNS_INDEX, {"gone": 1, "kept": 2})
    await redis.zadd(keys.runs_by_status(0, "SUCCEEDED"), {"gone": 1, "kept": 2})
    await redis.hset(keys.run_meta("kept"), "status", "SUCCEEDED")

    assert await reader.prune_index(created_before_ms=100) == 1
    assert await redis.zrange(keys.runs_by_status(0, "SUCCEEDED"), 0, -1) == [b"kept"]
    assert await reader.count_runs() == ({"RUNNING": 0, "PAUSED": 0, "SUCCEEDED": 1, "FAILED": 0,
                                          "CANCELED": 0}, 1)
