"""The scheduler with four cells on one real Redis (docs/architecture.md, "Redis Cluster: cells"):
the keys a cluster deployment would name, every script call checked to stay in one hash slot
(graflow_runtime.testing.slots). Runs of every cell complete, a child run lands in its parent's
cell, an idempotency key finds its run, the listings (runs, feedback), the recovery sweep, the
wait timer and the feedback notifier cover every cell, and an outcome's dead letter goes to its
cell's dead-letter stream.
``four_cells`` comes before the fixtures that start a scheduler, which starts one outcome consumer
and one reader of ended runs per cell of the layout."""

import asyncio
import json

import pytest

from graflow_api.v1 import common_pb2, feedback_pb2, messages_pb2, scheduler_pb2
from graflow_runtime import keys
from graflow_runtime.graphs import graph_hash
from graflow_runtime.runids import new_run_id
from graflow_runtime.streams import DEAD_LETTER_FIELD
from graflow_runtime.testing.receiver import receiving

from graflow_scheduler.graph.compiler import compile_spec
from graflow_scheduler.testing.app import app_client, report, submit
from graflow_scheduler.testing.enqueued import enqueued, wait_enqueued
from graflow_scheduler.testing.runs import runs_ended
from graflow_scheduler.testing.specs import outcome, spec, waiting

CHAIN = spec(["a", "b"], ["a>b"])


def key_in_cell(cell: int, prefix: str = "key") -> str:
    """An idempotency key whose run is created in ``cell``."""
    return next(f"{prefix}-{i}" for i in range(1000) if keys.cell_of_idempotency_key(f"{prefix}-{i}") == cell)


async def submit_keyed(client, key, workflow=CHAIN):
    return await client.SubmitRun(scheduler_pb2.SubmitRunRequest(spec=workflow, idempotency_key=key))


async def test_runs_of_every_cell_complete_each_in_its_own_cell(
    four_cells, one_slot_scripts, make_app, redis
):
    app = await make_app()
    async with app_client(app) as client:
        run_ids = [(await submit_keyed(client, key_in_cell(cell))).run_id for cell in range(4)]
        run_ids += [await submit(client, CHAIN) for _ in range(4)]
        assert {keys.cell_of(run_id) for run_id in run_ids} == {0, 1, 2, 3}
        for node_id in ("a", "b"):
            await wait_enqueued(redis, lambda c, n=node_id: all((n, 1) in c.delivered(r) for r in run_ids))
            await report(redis, *(outcome(run_id, node_id) for run_id in run_ids))
        for run_id in run_ids:
            answer = await client.WaitRun(scheduler_pb2.WaitRunRequest(run_id=run_id, wait_ms=10_000))
            assert answer.run.status == common_pb2.RUN_STATUS_SUCCEEDED, run_id

    # Each envelope went to its run's cell's lane, each end to its cell's ended-runs stream.
    for cell in range(4):
        in_cell = sorted(r for r in run_ids if keys.cell_of(r) == cell)
        entries = await redis.xrange(keys.queue_stream("default", cell))
        queued = {messages_pb2.TaskEnvelope.FromString(f[keys.ENVELOPE_FIELD]).run_id for _, f in entries}
        assert sorted(queued) == in_cell
        ended = await redis.xrange(keys.runs_ended(cell))
        assert sorted(f[keys.RUN_ENDED_RUN_FIELD].decode() for _, f in ended) == in_cell
        assert await redis.scard(keys.active_runs(cell)) == 0
    assert sorted(run_id for run_id, _ in await runs_ended(redis)) == sorted(run_ids)
    assert {"create_run.lua", "dispatch.lua", "apply_outcome.lua"} <= set(one_slot_scripts)
    assert await redis.exists(keys.OUTCOMES_STREAM, keys.RUNS_ENDED, keys.RUNS_INDEX) == 0


async def test_a_child_run_is_created_in_its_parents_cell_and_resumes_its_parent(
    four_cells, one_slot_scripts, make_app, redis
):
    app = await make_app(wait_timer_interval_s=0.02)
    async with app_client(app) as client:
        for cell in range(4):
            parent = (await submit_keyed(client, key_in_cell(cell, "parent"), spec(["a"]))).run_id
            child_request = scheduler_pb2.SubmitRunRequest(
                spec=spec(["c"]), parent=scheduler_pb2.ParentRef(run_id=parent, node_id="a")
            )
            child = (await client.SubmitRun(child_request)).run_id
            assert keys.cell_of(child) == keys.cell_of(parent) == cell
            wait = messages_pb2.Wait(child_run_id=child)
            await report(
                redis,
                messages_pb2.TaskOutcome(
                    run_id=parent, node_id="a", attempt=1, status=messages_pb2.TaskOutcome.STATUS_WAITING,
                    worker_id="w1", wait=wait,
                ),
            )
            await report(redis, outcome(child, "c"))
            await wait_enqueued(redis, lambda c, p=parent: ("a", 2) in c.delivered(p))
        # Canceling a parent cancels its child (the children-to-cancel index of the parent's cell).
        parent = (await submit_keyed(client, key_in_cell(3, "canceled"), spec(["a"]))).run_id
        child = (
            await client.SubmitRun(
                scheduler_pb2.SubmitRunRequest(
                    spec=spec(["c"]), parent=scheduler_pb2.ParentRef(run_id=parent, node_id="a")
                )
            )
        ).run_id
        await client.CancelRun(scheduler_pb2.CancelRunRequest(run_id=parent, reason="stop"))
        info = await client.GetRun(scheduler_pb2.GetRunRequest(run_id=child))
        assert info.status == common_pb2.RUN_STATUS_CANCELED
        assert info.message == f"parent run {parent} was canceled"
    scripts = {"create_run.lua", "apply_outcome.lua", "resolve_wait.lua", "cancel_run.lua"}
    assert scripts <= set(one_slot_scripts)


async def test_an_idempotency_key_finds_its_run_in_the_keys_cell(four_cells, one_slot_scripts, client, redis):
    for cell in range(4):
        key = key_in_cell(cell)
        first = await submit_keyed(client, key)
        again = await submit_keyed(client, key)
        assert (first.created, again.created) == (True, False)
        assert again.run_id == first.run_id and keys.cell_of(first.run_id) == cell
        assert await redis.get(keys.idempotency(key, cell)) == first.run_id.encode()
        # The run's end sets its idempotency key (in its cell) to expire with it.
        await client.CancelRun(scheduler_pb2.CancelRunRequest(run_id=first.run_id))
        assert 0 < await redis.ttl(keys.idempotency(key, cell)) <= 7 * 24 * 3600


async def test_list_runs_pages_over_every_cell_once_newest_first(four_cells, one_slot_scripts, store, reader):
    plan = compile_spec(CHAIN)
    created = []
    for i in range(41):
        # Three runs a millisecond, in different cells: ties across cells and pages.
        ms = 1_000 + i // 3
        run_id = new_run_id(ms, cell=i % 4)
        await store.create_run(plan, run_id=run_id, graph_hash="h", now_ms=ms)
        created.append((ms, run_id))
    expected = [run_id for _, run_id in sorted(created, reverse=True)]
    for limit in (1, 4, 7, 50):
        listed, token = [], ""
        while True:
            runs, token = await reader.list_runs(limit=limit, status=None, page_token=token)
            listed += [run.run_id for run in runs]
            if not token:
                break
        assert listed == expected, limit


async def test_runs_are_listed_by_status_and_counted_over_every_cell(
    four_cells, one_slot_scripts, store, reader
):
    plan = compile_spec(CHAIN)
    created = []
    for i in range(13):
        run_id = new_run_id(1_000 + i, cell=i % 4)
        await store.create_run(plan, run_id=run_id, graph_hash="h", now_ms=1_000 + i)
        if i % 3 == 0:
            await store.cancel_run(run_id, "test", now_ms=2_000)
        created.append(run_id)
    canceled = created[::3][::-1]

    listed, token = [], ""
    while True:
        runs, token = await reader.list_runs(limit=2, status="CANCELED", page_token=token)
        listed += [run.run_id for run in runs]
        if not token:
            break

    assert listed == canceled
    assert await reader.count_runs() == ({"RUNNING": 8, "PAUSED": 0, "SUCCEEDED": 0, "FAILED": 0,
                                          "CANCELED": 5}, 13)


async def test_feedback_listing_and_deadlines_cover_every_cell(four_cells, one_slot_scripts, make_app, redis):
    app = await make_app(wait_timer_interval_s=0.02)
    async with app_client(app) as client:
        run_ids = [(await submit_keyed(client, key_in_cell(cell))).run_id for cell in range(4)]
        for index, run_id in enumerate(run_ids):
            request = feedback_pb2.FeedbackRequest(
                request_id="a.0.1", kind=feedback_pb2.FEEDBACK_KIND_APPROVAL, prompt="ship it?",
                # The run of cell 3 times out; its deadline is in its cell's index.
                timeout_ms=50 if index == 3 else 0,
            )
            await report(
                redis,
                messages_pb2.TaskOutcome(
                    run_id=run_id, node_id="a", attempt=1, status=messages_pb2.TaskOutcome.STATUS_WAITING,
                    worker_id="w1", wait=messages_pb2.Wait(feedback=request),
                ),
            )
            # Parked before the next is reported: the listing is oldest first (created when parked).
            for _ in range(500):
                if await redis.hexists(keys.run_waits(run_id), "a.0.1"):
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.002)
        listed = []
        for _ in range(500):
            listed = (await client.ListFeedback(scheduler_pb2.ListFeedbackRequest())).requests
            if len(listed) >= 3:
                break
            await asyncio.sleep(0.02)
        # The request of cell 3 timed out (FeedbackTimeout fails its node); the others are listed.
        info = await client.GetRun(scheduler_pb2.GetRunRequest(run_id=run_ids[3]))
        for _ in range(500):
            if info.error.type:
                break
            await asyncio.sleep(0.02)
            info = await client.GetRun(scheduler_pb2.GetRunRequest(run_id=run_ids[3]))
        assert info.error.type == "FeedbackTimeout"
        listed = (await client.ListFeedback(scheduler_pb2.ListFeedbackRequest())).requests
        assert [r.run_id for r in listed] == run_ids[:3]
        two = (await client.ListFeedback(scheduler_pb2.ListFeedbackRequest(limit=2))).requests
        assert [r.run_id for r in two] == run_ids[:2]
    assert "resolve_wait.lua" in one_slot_scripts


async def test_feedback_requests_of_every_cell_are_notified_from_their_cell_s_stream(
    four_cells, one_slot_scripts, make_app, redis
):
    async with receiving() as receiver:
        app = await make_app(feedback_webhook_url=receiver.url)
        async with app_client(app) as client:
            run_ids = [(await submit_keyed(client, key_in_cell(cell))).run_id for cell in range(4)]
            await report(redis, *(waiting(run_id) for run_id in run_ids))
            got = await receiver.wait_for(4)
    assert sorted(json.loads(r.body)["graflow"]["run_id"] for r in got) == sorted(run_ids)
    for cell, run_id in enumerate(run_ids):
        (entry,) = await redis.xrange(keys.feedback_opened(cell))
        assert entry[1][keys.FEEDBACK_OPENED_RUN_FIELD].decode() == run_id
    assert "apply_outcome.lua" in one_slot_scripts


async def test_the_recovery_sweep_dispatches_ready_nodes_of_every_cell(
    four_cells, one_slot_scripts, app, store, downstreams, redis
):
    await app.sweep.stop()  # sweep by hand below
    downstreams.result_store.graphs[graph_hash(CHAIN)] = CHAIN
    plan = compile_spec(CHAIN)
    run_ids = [new_run_id(cell=cell) for cell in range(4)]
    for run_id in run_ids:  # created READY, never dispatched (as if the scheduler died in between)
        await store.create_run(plan, run_id=run_id, graph_hash=graph_hash(CHAIN), now_ms=1)
    assert await app.sweep.sweep_once() == 4
    found = await enqueued(redis)
    assert [found.delivered(run_id) for run_id in run_ids] == [[("a", 1)]] * 4
    for run_id in run_ids:
        entries = await redis.xrange(keys.queue_stream("default", keys.cell_of(run_id)))
        queued = [messages_pb2.TaskEnvelope.FromString(f[keys.ENVELOPE_FIELD]).run_id for _, f in entries]
        assert queued == [run_id]


@pytest.mark.parametrize("cell", [1, 3])
async def test_an_undecodable_outcome_is_dead_lettered_in_its_streams_cell(four_cells, app, redis, cell):
    await redis.xadd(keys.outcomes_stream(cell), {keys.OUTCOME_FIELD: b"\xff not an outcome"})
    for _ in range(500):
        if await redis.xlen(keys.dead_letters_stream(cell)):
            break
        await asyncio.sleep(0.02)
    ((_, fields),) = await redis.xrange(keys.dead_letters_stream(cell))
    letter = messages_pb2.DeadLetter.FromString(fields[DEAD_LETTER_FIELD])
    assert letter.reason.startswith(f"{keys.outcomes_stream(cell)}: undecodable outcome")
    letters = [await redis.xlen(keys.dead_letters_stream(c)) for c in range(4)]
    assert letters == [int(c == cell) for c in range(4)]
    assert (await redis.xpending(keys.outcomes_stream(cell), keys.SCHEDULER_GROUP))["pending"] == 0
