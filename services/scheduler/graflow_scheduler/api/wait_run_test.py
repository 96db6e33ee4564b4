"""Waiting for a run's end in one call: ``WaitRun`` and ``SubmitRun`` with ``wait_ms``, woken by the
process's one reader of ``gf:ended`` (also when another replica applied the end)."""

import asyncio

import grpc
import pytest

from graflow_api.v1 import common_pb2, scheduler_pb2
from graflow_runtime import keys
from graflow_runtime.limits import MAX_WAIT_MS
from graflow_runtime.runids import new_run_id

from graflow_scheduler.testing.app import app_client, report
from graflow_scheduler.testing.enqueued import wait_enqueued
from graflow_scheduler.testing.specs import outcome, spec

CHAIN = spec(["a", "b"], ["a>b"])


async def submit(client, **kwargs):
    return await client.SubmitRun(scheduler_pb2.SubmitRunRequest(spec=CHAIN, **kwargs))


async def wait(client, run_id, wait_ms):
    return await client.WaitRun(scheduler_pb2.WaitRunRequest(run_id=run_id, wait_ms=wait_ms))


async def test_a_waiting_call_answers_with_the_end_and_its_failure(client, redis, app):
    run_id = (await submit(client)).run_id
    waiter = asyncio.create_task(wait(client, run_id, 30_000))
    await asyncio.sleep(0.05)  # the call is registered (it would see the end either way)
    await report(redis, outcome(run_id, "a", ok=False, retryable=False, error_type="KeyError"))
    answer = await asyncio.wait_for(waiter, 10)
    assert (answer.run.run_id, answer.run.status) == (run_id, common_pb2.RUN_STATUS_FAILED)
    assert (answer.run.failed_node_id, answer.run.error.type) == ("a", "KeyError")
    assert list(answer.run.sink_node_ids) == ["b"]
    assert (answer.results_inline, list(answer.results)) == (False, [])
    assert app.run_ends.waiting_runs == 0


async def test_a_wait_that_passes_answers_with_the_live_status_and_leaves_nothing_registered(client, app):
    run_id = (await submit(client)).run_id
    answer = await wait(client, run_id, 50)
    assert answer.run.status == common_pb2.RUN_STATUS_RUNNING
    assert app.run_ends.waiting_runs == 0
    # wait_ms 0: the current state at once.
    assert (await wait(client, run_id, 0)).run.status == common_pb2.RUN_STATUS_RUNNING


async def test_an_ended_run_is_answered_at_once(client):
    run_id = (await submit(client)).run_id
    await client.CancelRun(scheduler_pb2.CancelRunRequest(run_id=run_id, reason="enough"))
    answer = await asyncio.wait_for(wait(client, run_id, 600_000), 10)
    assert (answer.run.status, answer.run.message) == (common_pb2.RUN_STATUS_CANCELED, "enough")


async def test_an_end_applied_by_another_replica_wakes_the_waiter(app, make_app):
    other = await make_app()
    async with app_client(app) as first, app_client(other) as second:
        run_id = (await submit(first)).run_id
        waiter = asyncio.create_task(wait(first, run_id, 30_000))
        await asyncio.sleep(0.05)
        await second.CancelRun(scheduler_pb2.CancelRunRequest(run_id=run_id, reason="from the other one"))
        answer = await asyncio.wait_for(waiter, 10)
    assert (answer.run.status, answer.run.message) == (common_pb2.RUN_STATUS_CANCELED, "from the other one")


async def test_many_callers_waiting_for_one_run_are_all_answered(client, redis, app):
    run_id = (await submit(client)).run_id
    waiters = [asyncio.create_task(wait(client, run_id, 30_000)) for _ in range(20)]
    await asyncio.sleep(0.05)
    await report(redis, outcome(run_id, "a", ok=False, retryable=False))
    answers = await asyncio.wait_for(asyncio.gather(*waiters), 10)
    assert {a.run.status for a in answers} == {common_pb2.RUN_STATUS_FAILED}
    assert app.run_ends.waiting_runs == 0


async def test_submit_with_wait_ms_answers_with_the_end(client, redis):
    submitting = asyncio.create_task(submit(client, wait_ms=30_000))
    found = await wait_enqueued(redis, lambda q: len(q.deliveries) == 1)
    run_id = found.deliveries[0].envelope.run_id
    await report(redis, outcome(run_id, "a", ok=False, retryable=False))
    response = await asyncio.wait_for(submitting, 10)
    assert (response.run_id, response.created) == (run_id, True)
    assert (response.result.run.status, response.result.run.failed_node_id) == (
        common_pb2.RUN_STATUS_FAILED,
        "a",
    )


async def test_submit_without_wait_ms_answers_without_a_result(client):
    response = await submit(client)
    assert not response.HasField("result")
    running = await submit(client, wait_ms=20)
    assert running.result.run.status == common_pb2.RUN_STATUS_RUNNING


async def test_waiting_for_an_unknown_run_is_not_found(client):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await wait(client, new_run_id(), 1000)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await wait(client, "not a run id", 1000)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_submit_with_wait_ms_and_a_known_idempotency_key_answers_with_that_runs_end(client):
    first = await submit(client, idempotency_key="once")
    await client.CancelRun(scheduler_pb2.CancelRunRequest(run_id=first.run_id, reason="done"))
    again = await asyncio.wait_for(submit(client, idempotency_key="once", wait_ms=600_000), 10)
    assert (again.run_id, again.created) == (first.run_id, False)
    assert (again.result.run.status, again.result.run.message) == (common_pb2.RUN_STATUS_CANCELED, "done")


async def test_a_wait_longer_than_max_wait_ms_is_invalid_naming_the_limit_and_creates_nothing(client, redis):
    run_id = (await submit(client)).run_id
    for call in (wait(client, run_id, MAX_WAIT_MS + 1), submit(client, wait_ms=MAX_WAIT_MS + 1)):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"wait_ms is {MAX_WAIT_MS + 1}; the limit is {MAX_WAIT_MS}" in info.value.details()
    assert await redis.zcard(keys.RUNS_INDEX) == 1
