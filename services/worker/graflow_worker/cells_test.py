"""The worker with the key layout of four cells (docs/architecture.md, "Redis Cluster: cells") on
one real Redis, which names exactly the keys a cluster would: it reads the lanes of every cell,
commits each outcome to its run's cell and keeps every script call in one hash slot."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from graflow_api.v1 import messages_pb2
from graflow_runtime import keys
from graflow_runtime.queues import QueueGroups
from graflow_runtime.runids import new_run_id
from graflow_runtime.testing.slots import check_one_slot

from graflow_worker.committer import Finished
from graflow_worker.main_test import drain, worker_process
from graflow_worker.runner import Execution
from graflow_worker.testing.services import (
    Stack,
    end_run,
    enqueue,
    envelope,
    eventually,
    pending_count,
    start_run,
    wait_outcomes,
)
from graflow_worker.testing.tasks import PROBE

SUCCEEDED = messages_pb2.TaskOutcome.STATUS_SUCCEEDED
CANCELED = messages_pb2.TaskOutcome.STATUS_CANCELED


@pytest.fixture
async def cells_stack(four_cells: keys.Layout, redis: aioredis.Redis, redis_url: str) -> AsyncIterator[Stack]:
    """The worker's stack, its workers created with four cells."""
    PROBE.reset()
    async with Stack(redis, redis_url) as s:
        yield s


async def outcomes_by_cell(redis: aioredis.Redis) -> dict[int, list[messages_pb2.TaskOutcome]]:
    return {
        cell: [messages_pb2.TaskOutcome.FromString(fields[keys.OUTCOME_FIELD])
               for _, fields in await redis.xrange(keys.outcomes_stream(cell))]
        for cell in keys.cells()
    }


async def test_a_worker_runs_deliveries_of_every_cell_and_commits_each_outcome_to_its_cell(
    cells_stack: Stack, one_slot_scripts: list[str]
) -> None:
    worker = await cells_stack.start_worker(concurrency=8)
    assert [consumer.cell for consumer in worker.consumers] == [0, 1, 2, 3]
    runs = {cell: new_run_id(cell=cell) for cell in keys.cells()}
    for cell, run_id in runs.items():
        await enqueue(cells_stack.redis, *(envelope(run_id, f"n{i}", "add", args={"a": cell, "b": i})
                                           for i in range(3)))

    await wait_outcomes(cells_stack.redis, 12)

    by_cell = await outcomes_by_cell(cells_stack.redis)
    for cell, run_id in runs.items():
        assert sorted((o.run_id, o.node_id, o.status) for o in by_cell[cell]) == [
            (run_id, f"n{i}", SUCCEEDED) for i in range(3)
        ]
        assert [cells_stack.store.value(run_id, f"n{i}") for i in range(3)] == [cell, cell + 1, cell + 2]
    assert await pending_count(cells_stack.redis) == 0
    # Each commit was one append_and_ack.lua call per cell (its keys in one slot, or the fixture
    # fails the test); the lane reads (read_lanes.lua, called inside a pipeline) name one cell's
    # lanes each.
    assert "append_and_ack.lua" in one_slot_scripts
    for consumer in worker.consumers:
        check_one_slot("read_lanes.lua", [*consumer._queue_of, consumer._endings.stream])


async def test_a_commit_batch_spanning_cells_is_one_call_per_cell(
    cells_stack: Stack, one_slot_scripts: list[str]
) -> None:
    """Finished attempts of four cells in one commit batch: one append_and_ack.lua call per cell
    (each in one slot), each outcome in its cell's stream, every delivery acknowledged."""
    redis = cells_stack.redis
    worker = cells_stack.worker()
    await QueueGroups(redis).ensure(["default"])  # the lanes' groups, in every cell
    committed: list[str] = []
    for cell in keys.cells():
        run_id = new_run_id(cell=cell)
        await enqueue(redis, envelope(run_id, "n", "add"))
        [(stream, [(entry_id, _)])] = await redis.xreadgroup(
            keys.WORKER_GROUP, worker.worker_id, {keys.queue_stream("default", cell): ">"})
        outcome = messages_pb2.TaskOutcome(run_id=run_id, node_id="n", attempt=1, status=SUCCEEDED)
        worker.committer.submit(Finished(stream.decode(), entry_id, Execution(outcome=outcome),
                                         functools.partial(committed.append, run_id), cell))
    flusher = asyncio.create_task(worker.committer.run())
    try:
        await eventually(lambda: len(committed) == 4, what="the batch to be committed")
    finally:
        flusher.cancel()

    assert worker.committer.batches == 1
    assert one_slot_scripts.count("append_and_ack.lua") == 4
    by_cell = await outcomes_by_cell(redis)
    assert {cell: [o.run_id for o in found] for cell, found in by_cell.items()} == {
        cell: [run_id] for cell, run_id in zip(keys.cells(), committed, strict=True)
    }
    assert await pending_count(redis) == 0


async def test_the_deliveries_held_across_cells_stay_within_the_documented_bound(cells_stack: Stack) -> None:
    """Each cell's loop reads up to the free slots: with every lane full, a worker of concurrency
    2 holds at most cells x free slots x 2 lanes (README, "Cells"), runs 2 at a time, and runs
    everything in the end."""
    for cell in keys.cells():
        run_id = new_run_id(cell=cell)
        await enqueue(cells_stack.redis, *(envelope(run_id, f"n{i}", "hold", args={"key": "gate"})
                                           for i in range(10)))
    worker = await cells_stack.start_worker(concurrency=2)
    await eventually(lambda: PROBE.running == 2, what="two deliveries to run")
    await asyncio.sleep(0.3)  # time for every cell's loop to read what it would

    held = await pending_count(cells_stack.redis)
    assert worker.held == held
    assert 2 <= held <= 4 * 2 * 2
    assert PROBE.max_running == 2
    PROBE.release("gate")
    await wait_outcomes(cells_stack.redis, 40, timeout=30)
    assert PROBE.max_running == 2


async def test_the_end_of_a_run_reaches_the_worker_through_its_cell_s_ended_runs_stream(
    cells_stack: Stack,
) -> None:
    run_id = new_run_id(cell=2)
    worker = await cells_stack.start_worker()
    await start_run(cells_stack.redis, run_id)
    await enqueue(cells_stack.redis, envelope(run_id, "waiter", "wait_for_cancel", args={"timeout_s": 20}))
    await eventually(lambda: f"wait_for_cancel:{run_id}" in PROBE.started, what="the task to start")

    await end_run(cells_stack.redis, run_id)  # appended to runs_ended(2)

    (first,) = await wait_outcomes(cells_stack.redis, 1)
    assert json.loads(cells_stack.store.results[(run_id, "waiter")].value.data) == "saw the cancel"
    await enqueue(cells_stack.redis, envelope(run_id, "later", "tracked", args={"tag": "later"}))
    _, second = await wait_outcomes(cells_stack.redis, 2)
    assert (second.node_id, second.status, second.error.type) == ("later", CANCELED, "RunEnded")
    assert worker.runner.cancellations.skipped_total == 1


async def test_an_envelope_in_another_cell_than_its_run_s_is_dead_lettered_in_the_cell_it_was_read_from(
    cells_stack: Stack, one_slot_scripts: list[str]
) -> None:
    await cells_stack.start_worker()
    run_id = new_run_id(cell=1)
    data = envelope(run_id, "n", "add", args={"a": 1}).SerializeToString()
    await cells_stack.redis.xadd(keys.queue_stream("default", 3), {keys.ENVELOPE_FIELD: data})

    async def letters() -> list:
        return await cells_stack.redis.xrange(keys.dead_letters_stream(3))

    [(_, fields)] = await eventually(letters, what="a dead letter in cell 3")
    letter = messages_pb2.DeadLetter.FromString(fields[b"d"])
    assert letter.run_id == run_id
    assert letter.reason == f"envelope in the wrong cell: run {run_id!r} belongs to cell 1, read from cell 3"
    assert await pending_count(cells_stack.redis) == 0
    assert (await outcomes_by_cell(cells_stack.redis)) == {cell: [] for cell in keys.cells()}


async def test_a_worker_process_set_to_four_cells_by_its_environment_reads_every_cell(
    cells_stack: Stack, tmp_path: Path
) -> None:
    """``GRAFLOW_WORKER_REDIS_CELLS=4``: the process records the layout in gf:layout, reads the
    lanes of every cell and commits each outcome to its run's cell."""
    async with worker_process(cells_stack, tmp_path, worker_id="cells-proc", redis_cells="4") as process:
        runs = [new_run_id(cell=cell) for cell in keys.cells()]
        for cell, run_id in enumerate(runs):
            await enqueue(cells_stack.redis, envelope(run_id, "n", "add", args={"a": cell, "b": 0}))
        await wait_outcomes(cells_stack.redis, 4)
        assert await drain(process) == 0
    by_cell = await outcomes_by_cell(cells_stack.redis)
    assert {cell: [(o.run_id, o.worker_id) for o in found] for cell, found in by_cell.items()} == {
        cell: [(runs[cell], "cells-proc")] for cell in keys.cells()
    }
    assert await cells_stack.redis.get(keys.LAYOUT_KEY) == b"cells=4 tagged=1"
