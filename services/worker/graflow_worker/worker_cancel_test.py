"""A run's end reaches the worker (invariant 11): through gf:ended, running tasks see it and later
deliveries of the run are skipped; a worker started after the end learns it from the run's meta
before starting anything (real Redis, coordinator and result-store doubles)."""

from __future__ import annotations

import json

from graflow_api.v1 import messages_pb2
from graflow_runtime import keys
from graflow_runtime.streams import tail_id

from graflow_worker.testing.services import (
    end_run,
    enqueue,
    envelope,
    eventually,
    pending_count,
    start_run,
    wait_outcomes,
)
from graflow_worker.testing.tasks import PROBE

CANCELED = messages_pb2.TaskOutcome.STATUS_CANCELED


async def test_a_running_task_sees_its_run_end_and_later_deliveries_are_skipped(stack):
    worker = await stack.start_worker()
    await start_run(stack.redis, "run-c")
    await enqueue(stack.redis, envelope("run-c", "waiter", "wait_for_cancel", args={"timeout_s": 20}))
    await eventually(lambda: "wait_for_cancel:run-c" in PROBE.started, what="the task to start")
    await end_run(stack.redis, "run-c")
    (first,) = await wait_outcomes(stack.redis, 1)
    assert first.status == messages_pb2.TaskOutcome.STATUS_SUCCEEDED
    assert json.loads(stack.store.results[("run-c", "waiter")].value.data) == "saw the cancel"
    await enqueue(stack.redis, envelope("run-c", "later", "tracked", args={"tag": "later:run-c"}))
    _, second = await wait_outcomes(stack.redis, 2)
    assert (second.node_id, second.status, second.error.type) == ("later", CANCELED, "RunEnded")
    assert "later:run-c" not in PROBE.started
    assert worker.runner.cancellations.skipped_total == 1
    assert await pending_count(stack.redis) == 0


async def test_a_worker_started_after_the_end_skips_every_queued_delivery_of_the_run(stack):
    # Ended before the worker existed: gf:ended is read from its tail, so only the check of each
    # read batch against the run's meta can catch these.
    await end_run(stack.redis, "run-gone", "CANCELED")
    await start_run(stack.redis, "run-live")
    await enqueue(stack.redis,
                  *(envelope("run-gone", f"n{i}", "tracked", args={"tag": f"n{i}:run-gone"})
                    for i in range(20)),
                  envelope("run-live", "n0", "tracked", args={"tag": "n0:run-live"}))
    worker = await stack.start_worker()
    found = await wait_outcomes(stack.redis, 21)
    skipped = [o for o in found if o.run_id == "run-gone"]
    assert len(skipped) == 20
    assert {(o.status, o.error.type) for o in skipped} == {(CANCELED, "RunEnded")}
    assert [o.status for o in found if o.run_id == "run-live"] == [messages_pb2.TaskOutcome.STATUS_SUCCEEDED]
    assert not any(tag.endswith(":run-gone") for tag in PROBE.calls)
    assert "n0:run-live" in PROBE.calls
    assert worker.runner.cancellations.skipped_total == 20
    assert await pending_count(stack.redis) == 0


async def test_a_delivery_enqueued_while_its_run_was_live_is_decided_from_the_ends_read_not_its_meta(stack):
    # The coordinator records the ended-runs stream's last id beside each entry it enqueues at once,
    # in the step that saw the run live; a worker that has read that stream since needs no look at
    # the run's meta. Shown by a meta that says "ended" without any end in the stream (which the
    # scheduler never writes): the covered delivery runs, the uncovered one is skipped.
    worker = await stack.start_worker()
    await stack.redis.hset(keys.run_meta("run-m"), mapping={keys.RUN_ENDED_AT_FIELD: "1"})
    await enqueue(stack.redis, envelope("run-m", "covered", "tracked", args={"tag": "covered:run-m"}),
                  ended_cursor=await tail_id(stack.redis, keys.RUNS_ENDED))
    (first,) = await wait_outcomes(stack.redis, 1)
    assert first.status == messages_pb2.TaskOutcome.STATUS_SUCCEEDED
    await enqueue(stack.redis, envelope("run-m", "uncovered", "tracked", args={"tag": "uncovered:run-m"}))
    _, second = await wait_outcomes(stack.redis, 2)
    assert (second.node_id, second.status, second.error.type) == ("uncovered", CANCELED, "RunEnded")
    assert worker.runner.cancellations.skipped_total == 1


async def test_a_covered_delivery_of_a_run_that_ended_after_its_cursor_is_skipped(stack):
    await stack.start_worker()
    await start_run(stack.redis, "run-e")
    cursor = await tail_id(stack.redis, keys.RUNS_ENDED)
    await end_run(stack.redis, "run-e")
    await enqueue(stack.redis, envelope("run-e", "late", "tracked", args={"tag": "late:run-e"}),
                  ended_cursor=cursor)
    (outcome,) = await wait_outcomes(stack.redis, 1)
    assert (outcome.status, outcome.error.type) == (CANCELED, "RunEnded")
    assert "late:run-e" not in PROBE.calls


async def test_a_cursor_from_before_the_worker_started_is_not_trusted(stack):
    await end_run(stack.redis, "run-old")  # ended before the worker: not in what it reads
    cursor = b"0-0"
    await stack.start_worker()
    await enqueue(stack.redis, envelope("run-old", "n", "tracked", args={"tag": "n:run-old"}),
                  ended_cursor=cursor)
    (outcome,) = await wait_outcomes(stack.redis, 1)
    assert (outcome.status, outcome.error.type) == (CANCELED, "RunEnded")
    assert "n:run-old" not in PROBE.calls
