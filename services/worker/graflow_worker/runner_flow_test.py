"""The runner's part of dynamic control flow: directives in the outcome of a success only, the
data of next_iteration, the end of the run reaching running tasks and deliveries not started yet."""

from __future__ import annotations

import asyncio
import json

import pytest

from graflow_api.v1 import messages_pb2

from graflow_worker.registry import load_registry
from graflow_worker.runner import Runner
from graflow_worker.testing.services import TASKS_MODULE, envelope

SUCCEEDED = messages_pb2.TaskOutcome.STATUS_SUCCEEDED
FAILED = messages_pb2.TaskOutcome.STATUS_FAILED
CANCELED = messages_pb2.TaskOutcome.STATUS_CANCELED


@pytest.fixture
def runner() -> Runner:
    r = Runner(load_registry([TASKS_MODULE]), worker_id="w-1", concurrency=2)
    yield r
    r.close()


async def test_a_successful_attempt_carries_its_directives_and_cycle_information(runner):
    env = envelope("run-1", "n1", "steer")
    env.cycle, env.max_cycles = 2, 5
    execution = await runner.run(env, {})
    assert execution.outcome.status == SUCCEEDED
    kinds = [d.WhichOneof("kind") for d in execution.outcome.directives]
    assert kinds == ["goto", "next_task"]
    assert execution.outcome.directives[1].next_task.task_type == "add"
    assert json.loads(execution.result.value.data) == {"cycle": 2, "max_cycles": 5, "can_iterate": True}


async def test_a_failed_attempt_drops_its_directives(runner):
    execution = await runner.run(envelope("run-1", "n1", "steer", args={"fail": True}), {})
    assert execution.outcome.status == FAILED
    assert list(execution.outcome.directives) == []


async def test_iteration_data_is_passed_as_the_data_argument(runner):
    env = envelope("run-1", "n1", "refine", args={"draft": 2})
    env.cycle, env.iteration_data_json = 1, b'{"score": 0.7}'
    execution = await runner.run(env, {})
    assert json.loads(execution.result.value.data) == {"draft": 2, "data": {"score": 0.7}}


async def test_iteration_data_for_a_task_without_a_data_parameter_fails_clearly(runner):
    env = envelope("run-1", "n1", "add", args={"a": 1})
    env.iteration_data_json = b"3"
    execution = await runner.run(env, {})
    assert execution.outcome.error.type == "InvalidArguments"
    assert "no parameter `data`" in execution.outcome.error.message


async def test_a_running_task_observes_the_cancellation_of_its_run(runner):
    running = asyncio.create_task(runner.run(envelope("run-1", "n1", "wait_for_cancel"), {}))
    await asyncio.sleep(0.05)
    runner.cancellations.cancel(["other-run"])
    await asyncio.sleep(0.05)
    assert not running.done()
    runner.cancellations.cancel(["run-1"])
    execution = await asyncio.wait_for(running, 5)
    assert json.loads(execution.result.value.data) == "saw the cancel"


async def test_a_delivery_of_an_ended_run_is_not_started(runner):
    runner.cancellations.cancel(["run-1"])
    execution = await runner.run(envelope("run-1", "n1", "steer"), {})
    assert execution.outcome.status == CANCELED
    assert (execution.outcome.error.type, execution.outcome.error.retryable) == ("RunEnded", False)
    assert execution.outcome.started_at_ms == 0 and execution.result is None
    assert runner.cancellations.skipped_total == 1
    assert (await runner.run(envelope("run-2", "n1", "add", args={"a": 1}), {})).outcome.status == SUCCEEDED


async def test_a_body_that_stops_on_its_runs_end_is_canceled_not_failed(runner):
    running = asyncio.create_task(runner.run(envelope("run-1", "n1", "stop_on_cancel"), {}))
    await asyncio.sleep(0.1)
    assert not running.done()
    runner.cancellations.cancel(["run-1"])
    execution = await asyncio.wait_for(running, 5)
    assert execution.outcome.status == CANCELED
    assert execution.outcome.error.type == "TaskCanceledError"
    assert execution.outcome.started_at_ms > 0
    assert runner.cancellations.skipped_total == 0


async def test_check_canceled_after_the_tasks_own_cancel_workflow_is_still_a_failure(runner):
    # The run has not ended (the directive would end it only with a success): not STATUS_CANCELED.
    execution = await runner.run(envelope("run-1", "n1", "cancel_then_check"), {})
    assert execution.outcome.status == FAILED
    assert execution.outcome.error.type == "TaskCanceledError"
