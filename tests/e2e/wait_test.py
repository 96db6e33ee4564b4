"""End to end: a run's result in one call (``SubmitRun`` with ``wait_ms``, ``WaitRun``), with the
sink results inline when they total at most 1 MiB, and the SDK's ``submit_and_wait``/``result``
built on it."""

from __future__ import annotations

import time

import grpc
import pytest

from graflow import RunCanceledError, RunFailedError, workflow
from graflow.devstack import LocalStack
from graflow.payload import decode_results
from graflow_api.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from graflow_runtime.grpc_options import MAX_MESSAGE_BYTES
from graflow_runtime.limits import MAX_RESULT_BYTES
from tests.e2e.tasks import add_one, blob, double, explode, left, lengths, right, slow, source

MIB = 1024 * 1024


@pytest.fixture
def scheduler(stack: LocalStack):
    with grpc.insecure_channel(stack.scheduler_address) as channel:
        yield scheduler_pb2_grpc.SchedulerStub(channel)


def test_submit_and_wait_returns_the_result(client, effects):
    with workflow("sequence") as wf:
        source(task_id="source", value=4) >> add_one >> double
    assert client.submit_and_wait(wf, timeout=30) == 10
    with workflow("two_sinks") as wf:
        source >> (left | right)
    assert client.submit_and_wait(wf, timeout=30) == {"left": 11, "right": 101}


def test_one_submit_call_answers_with_the_sink_results_inline(client, scheduler):
    with workflow("sequence") as wf:
        source(task_id="source", value=1) >> add_one
    request = scheduler_pb2.SubmitRunRequest(spec=wf.spec(), wait_ms=30_000)
    response = scheduler.SubmitRun(request, timeout=40)
    assert response.result.run.status == common_pb2.RUN_STATUS_SUCCEEDED
    assert response.result.results_inline
    assert decode_results(response.result.results) == {"add_one": 2}
    # Waiting for an existing (here ended) run: the same answer.
    again = scheduler.WaitRun(scheduler_pb2.WaitRunRequest(run_id=response.run_id, wait_ms=1000), timeout=10)
    assert (again.results_inline, decode_results(again.results)) == (True, {"add_one": 2})


def test_results_over_the_inline_bound_are_read_with_get_results(client, scheduler):
    with workflow("big") as wf:
        wf.add(blob(task_id="blob", size=MIB + 10))
    run = client.submit(wf)
    answer = scheduler.WaitRun(scheduler_pb2.WaitRunRequest(run_id=run.id, wait_ms=30_000), timeout=40)
    assert answer.run.status == common_pb2.RUN_STATUS_SUCCEEDED
    assert (answer.results_inline, list(answer.results)) == (False, [])
    assert client.submit_and_wait(wf, timeout=30) == "x" * (MIB + 10)
    assert run.result(timeout=30) == "x" * (MIB + 10)


def test_a_result_over_the_limit_fails_its_run_at_once_naming_the_limit_and_the_worker_goes_on(client):
    """Issue 14: an 80 MiB result (over the 64 MiB gRPC message limit) made the worker pause its
    intake and retry forever; now it is refused before any call, without a retry."""
    with workflow("huge") as wf:
        wf.add(blob(task_id="huge", size=80 * MIB))
    started = time.monotonic()
    with pytest.raises(RunFailedError) as failure:
        client.submit_and_wait(wf, timeout=30)
    assert time.monotonic() - started < 20
    assert failure.value.error.type == "ResultTooLarge"
    assert f"over the limit of {MAX_RESULT_BYTES} bytes (MAX_RESULT_BYTES)" in str(failure.value)
    with workflow("after") as after:
        source(task_id="source", value=4) >> add_one >> double
    assert client.submit_and_wait(after, timeout=30) == 10


def test_upstream_results_over_the_message_limit_fail_the_task_at_once_naming_the_limit(client):
    """Issue 14: upstream results together over the 64 MiB gRPC message limit (five of 15 MiB)
    made the worker pause its intake and retry forever; now the task fails, without a retry."""
    with workflow("wide") as wf:
        sources = [blob(task_id=f"b{i}", size=15 * MIB) for i in range(1, 6)]
        (sources[0] | sources[1] | sources[2] | sources[3] | sources[4]) >> lengths(task_id="sink")
    started = time.monotonic()
    with pytest.raises(RunFailedError) as failure:
        client.submit_and_wait(wf, timeout=60)
    assert time.monotonic() - started < 45
    assert (failure.value.error.node_id, failure.value.error.type) == ("sink", "UpstreamTooLarge")
    assert f"message limit of {MAX_MESSAGE_BYTES} bytes (MAX_MESSAGE_BYTES)" in str(failure.value)
    with workflow("after_wide") as after:
        source(task_id="source", value=4) >> add_one >> double
    assert client.submit_and_wait(after, timeout=30) == 10


def test_submit_and_wait_raises_the_failure_of_the_run(client):
    with workflow("fails") as wf:
        source >> explode(task_id="bad", message="disk on fire") >> double
    with pytest.raises(RunFailedError) as failure:
        client.submit_and_wait(wf, timeout=30)
    assert (failure.value.error.node_id, failure.value.error.type) == ("bad", "ValueError")
    assert failure.value.error.message == "disk on fire"
    assert "raise ValueError(message)" in failure.value.error.traceback


def test_a_wait_that_passes_raises_timeout_and_the_run_goes_on(client, scheduler):
    with workflow("slow") as wf:
        wf.add(slow(task_id="slow", seconds=1.0))
    with pytest.raises(TimeoutError, match="did not finish within 0.2s"):
        client.submit_and_wait(wf, timeout=0.2)
    run = client.submit(wf)
    live = scheduler.WaitRun(scheduler_pb2.WaitRunRequest(run_id=run.id, wait_ms=10), timeout=10)
    assert live.run.status == common_pb2.RUN_STATUS_RUNNING
    assert client.run(run.id).result(timeout=30) == 1.0  # a handle made from the id alone


def test_a_run_canceled_while_waited_for_raises_canceled(client):
    with workflow("slow") as wf:
        wf.add(slow(task_id="slow", seconds=3.0))
    run = client.submit(wf)
    client.cancel(run.id, "not needed")
    with pytest.raises(RunCanceledError, match="not needed"):
        run.result(timeout=30)
