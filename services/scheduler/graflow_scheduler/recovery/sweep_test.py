"""The recovery sweep dispatches READY nodes that were never enqueued."""

import time

from graflow_runtime import keys
from graflow_runtime.graphs import graph_hash
from graflow_runtime.runids import new_run_id

from graflow_scheduler.graph.compiler import compile_spec
from graflow_scheduler.recovery import sweep
from graflow_scheduler.state.reader import RunReader
from graflow_scheduler.testing.enqueued import enqueued
from graflow_scheduler.testing.runs import RunHarness
from graflow_scheduler.testing.specs import spec

WORKFLOW = spec(["a", "b", "c"], ["a>c", "b>c"])


async def make_run(app, store, downstreams):
    await app.sweep.stop()  # sweep by hand below
    downstreams.result_store.graphs[graph_hash(WORKFLOW)] = WORKFLOW
    return await RunHarness.create(store, WORKFLOW)


async def test_sweep_dispatches_ready_nodes_with_their_current_attempt(app, store, downstreams, redis):
    run = await make_run(app, store, downstreams)
    await run.finish("a", ok=False, retry_delay_ms=1000)  # a: READY at attempt 2; b: READY at 1
    assert await app.sweep.sweep_once() == 2
    assert sorted((await enqueued(redis)).delivered(run.run_id)) == [("a", 2), ("b", 1)]


async def test_sweep_dispatches_a_node_with_the_attempts_it_lost_with_its_workers(
    app, store, downstreams, redis
):
    run = await make_run(app, store, downstreams)
    for attempt in (1, 2):  # a's workers died twice
        await run.finish("a", attempt=attempt, ok=False, retry_delay_ms=0, worker_lost=True)

    await app.sweep.sweep_once()

    lost = {
        d.envelope.node_id: (d.envelope.attempt, d.envelope.lost_attempts)
        for d in (await enqueued(redis)).deliveries
    }
    assert lost == {"a": (3, 2), "b": (1, 0)}


async def test_sweep_repeats_harmlessly_and_skips_ended_runs(app, store, downstreams, redis):
    run = await make_run(app, store, downstreams)
    assert await app.sweep.sweep_once() == 2
    assert await app.sweep.sweep_once() == 2  # sent again, enqueued once
    assert (await enqueued(redis)).delivered(run.run_id) == [("a", 1), ("b", 1)]
    await store.cancel_run(run.run_id, "stop", now_ms=5)
    assert await app.sweep.sweep_once() == 0
    assert app.sweep.stats.redispatched == 4


async def test_sweep_forgets_active_runs_whose_state_expired(app, store, downstreams, redis):
    run = await make_run(app, store, downstreams)
    await redis.delete(*keys.run_keys(run.run_id))
    assert await app.sweep.sweep_once() == 0
    assert not await redis.sismember(keys.ACTIVE_RUNS, run.run_id)


async def test_sweep_prunes_listing_entries_of_expired_runs_only(app, store, redis):
    await app.sweep.stop()
    plan = compile_spec(spec(["a"]))
    kept, expired = new_run_id(1), new_run_id(2)
    for run_id in (kept, expired):
        await store.create_run(plan, run_id=run_id, graph_hash="h", now_ms=1)
        await store.cancel_run(run_id, "old", now_ms=2)
    await redis.delete(keys.run_meta(expired))
    await app.sweep.sweep_once()
    assert [m.decode() for m in await redis.zrange(keys.RUNS_INDEX, 0, -1)] == [kept]


async def test_sweep_keeps_the_results_of_live_runs_from_expiring(app, store, downstreams, redis):
    old = await make_run(app, store, downstreams)  # created at 1 s after the epoch: long due
    ended = await RunHarness.create(store, spec(["x"]))
    await ended.finish("x")
    fresh = await RunHarness.create(store, spec(["y"]))
    await redis.hset(keys.run_meta(fresh.run_id), "created", int(time.time() * 1000))

    await app.sweep.sweep_once()
    assert downstreams.result_store.kept_alive == [[old.run_id]]  # not the ended one, not the fresh one
    # The graph of a live run is kept as long as its results (stored graphs expire too).
    assert downstreams.result_store.kept_graphs == [[graph_hash(WORKFLOW)]]
    assert int(await redis.hget(keys.run_meta(old.run_id), "kept")) > time.time() * 1000 - 60_000

    await app.sweep.sweep_once()  # kept a moment ago: not due again
    assert downstreams.result_store.kept_alive == [[old.run_id]]


async def status_indexes(redis, cell: int = 0) -> dict[str, set[str]]:
    """run id -> the statuses whose index of ``cell`` lists it."""
    found: dict[str, set[str]] = {}
    for status in keys.RUN_STATUSES:
        for member in await redis.zrange(keys.runs_by_status(cell, status), 0, -1):
            found.setdefault(member.decode(), set()).add(status)
    return found


async def test_sweep_repairs_status_indexes_left_behind_by_older_schedulers(
    app, store, redis, monkeypatch
):
    await app.sweep.stop()
    plan = compile_spec(spec(["a"]))
    ended, paused, running = (new_run_id(i) for i in (1, 2, 3))
    for run_id in (ended, paused, running):
        await store.create_run(plan, run_id=run_id, graph_hash="h", now_ms=1)
    await store.cancel_run(ended, "stop", now_ms=2)
    # What a scheduler from before the indexes does: the meta changes, the indexes do not.
    await redis.zrem(keys.runs_by_status(0, "CANCELED"), ended)
    await redis.zadd(keys.runs_by_status(0, "RUNNING"), {ended: 1})
    await redis.hset(keys.run_meta(paused), "status", "PAUSED")
    assert (await status_indexes(redis))[ended] == {"RUNNING"}

    monkeypatch.setattr(sweep, "STATUS_REPAIRS_PER_PASS", 2)  # the listing walked over two passes
    await app.sweep.sweep_once()
    await app.sweep.sweep_once()

    assert await status_indexes(redis) == {ended: {"CANCELED"}, paused: {"PAUSED"}, running: {"RUNNING"}}
    assert app.sweep.stats.status_entries_fixed == 4
    created = await redis.zscore(keys.runs_by_status(0, "PAUSED"), paused)
    assert created == await redis.zscore(keys.RUNS_INDEX, paused)  # scored by creation, as the scripts do
    await app.sweep.sweep_once()
    assert app.sweep.stats.status_entries_fixed == 4  # nothing more to fix


async def test_the_status_repair_stays_in_each_cells_slot(four_cells, one_slot_scripts, store, redis):
    plan = compile_spec(spec(["a"]))
    run_ids = [new_run_id(i) for i in range(1, 13)]
    for run_id in run_ids:
        await store.create_run(plan, run_id=run_id, graph_hash="h", now_ms=1)
        await redis.hset(keys.run_meta(run_id), "status", "PAUSED")
    reader = RunReader(redis)
    for cell in keys.cells():
        assert await reader.repair_status_indexes(cell, 0, 100) == (0, 2 * sum(
            1 for r in run_ids if keys.cell_of(r) == cell
        ))
    assert "repair_status.lua" in " ".join(one_slot_scripts)
    for cell in keys.cells():
        paused = await redis.zrange(keys.runs_by_status(cell, "PAUSED"), 0, -1)
        assert sorted(m.decode() for m in paused) == sorted(r for r in run_ids if keys.cell_of(r) == cell)
