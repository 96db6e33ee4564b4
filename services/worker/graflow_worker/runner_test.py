"""Running one attempt: binding, sync/async, timeouts, errors, encoding (no Redis, no gRPC)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from graflow import payload
from graflow_api.v1 import messages_pb2

from graflow_worker.registry import load_registry
from graflow_worker.runner import Execution, Runner
from graflow_worker.testing.services import TASKS_MODULE, envelope, eventually
from graflow_worker.testing.tasks import PROBE

SUCCEEDED = messages_pb2.TaskOutcome.STATUS_SUCCEEDED
FAILED = messages_pb2.TaskOutcome.STATUS_FAILED


class DictChannel:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        return {k: self.data[k] for k in keys if k in self.data}

    def set_many(self, values: dict[str, Any], ttl_s: float | None) -> None:
        self.data.update(values)

    def delete(self, keys: list[str]) -> int:
        return sum(1 for k in keys if self.data.pop(k, None) is not None)

    def keys(self) -> list[str]:
        return sorted(self.data)


@pytest.fixture
def channel() -> DictChannel:
    return DictChannel()


@pytest.fixture
def runner(channel: DictChannel) -> Runner:
    PROBE.reset()
    r = Runner(load_registry([TASKS_MODULE]), worker_id="w-1", concurrency=2, traceback_frames=8,
               channel_factory=lambda run_id: channel)
    yield r
    r.close()


async def run(runner: Runner, task_type: str, *, upstream: dict[str, Any] | None = None,
              types: dict[str, str] | None = None, **kwargs: Any) -> Execution:
    env = envelope("run-1", "node-1", task_type, inputs=list(kwargs.pop("inputs", upstream or {})), **kwargs)
    encoded = {k: payload.encode(v) for k, v in (upstream or {}).items()}
    return await runner.run(env, encoded, types)


def value(execution: Execution) -> Any:
    assert execution.outcome.status == SUCCEEDED, execution.outcome.error
    assert execution.outcome.has_result
    return payload.decode(execution.result.value)


async def test_bound_arguments_win_over_upstream_results_which_win_over_defaults(runner):
    execution = await run(runner, "describe", args={"x": "bound-x"},
                          upstream={"x": "upstream-x", "y": "upstream-y"})
    assert value(execution) == {"x": "bound-x", "y": "upstream-y", "z": "default-z"}


async def test_parameter_named_after_an_upstream_task_type_receives_that_nodes_result(runner):
    execution = await run(runner, "describe", upstream={"f1": "from-f1", "y": "from-y"},
                          types={"f1": "x", "y": "y"})
    assert value(execution) == {"x": "from-f1", "y": "from-y", "z": "default-z"}


async def test_node_id_wins_over_task_type_and_kwargs_get_the_rest_by_node_id(runner):
    execution = await run(runner, "collect_with_base", upstream={"base": 1, "b2": 2, "other": 3},
                          types={"base": "t", "b2": "base", "other": "t"})
    assert value(execution) == {"base": 1, "rest": {"b2": 2, "other": 3}}
    execution = await run(runner, "collect_with_base", upstream={"b1": 1, "b2": 2},
                          types={"b1": "base", "b2": "t"})
    assert value(execution) == {"base": 1, "rest": {"b2": 2}}


async def test_several_upstream_nodes_of_the_parameters_task_type_are_ambiguous(runner):
    execution = await run(runner, "describe", upstream={"x1": 1, "x2": 2}, types={"x1": "x", "x2": "x"})
    error = execution.outcome.error
    assert (error.type, error.retryable) == ("AmbiguousArgument", False)
    assert "'x1'" in error.message and "'x2'" in error.message


async def test_result_is_stored_under_the_attempt_with_worker_identity(runner):
    execution = await run(runner, "add", args={"a": 1, "b": 2}, attempt=3)
    assert value(execution) == 3
    outcome = execution.outcome
    assert (outcome.run_id, outcome.node_id, outcome.attempt) == ("run-1", "node-1", 3)
    assert outcome.worker_id == "w-1"
    assert (execution.result.attempt, execution.result.worker_id) == (3, "w-1")
    assert execution.result.task_type == "add"
    assert 0 < outcome.started_at_ms <= outcome.finished_at_ms


async def test_missing_required_parameter_fails_naming_it_and_the_upstream_nodes(runner):
    execution = await run(runner, "add", upstream={"other": 1, "b": 2})
    error = execution.outcome.error
    assert execution.outcome.status == FAILED and execution.result is None
    assert error.type == "MissingArgument"
    assert "'a'" in error.message and "'other'" in error.message and "'b'" in error.message
    assert not error.retryable


async def test_parameter_named_after_an_upstream_node_without_result_fails_as_upstream_missing(runner):
    execution = await run(runner, "add", args={"b": 1}, upstream={}, inputs=["a"])
    assert execution.outcome.error.type == "UpstreamResultMissing"
    assert "'a'" in execution.outcome.error.message
    assert execution.outcome.error.retryable


async def test_var_keyword_parameter_receives_every_upstream_result(runner):
    execution = await run(runner, "collect", upstream={"u1": 1, "u-2": {"k": [1, 2]}})
    assert value(execution) == {"u1": 1, "u-2": {"k": [1, 2]}}
    execution = await run(runner, "collect_with_base", upstream={"base": 5, "other": 6})
    assert value(execution) == {"base": 5, "rest": {"other": 6}}


async def test_bound_argument_without_parameter_fails_as_invalid_arguments(runner):
    execution = await run(runner, "add", args={"a": 1, "nope": 2})
    assert execution.outcome.error.type == "InvalidArguments"
    assert "'nope'" in execution.outcome.error.message
    assert not execution.outcome.error.retryable


async def test_args_that_are_not_a_json_object_fail_as_invalid_arguments(runner):
    env = envelope("run-1", "node-1", "add")
    env.args_json = b"[1, 2]"
    execution = await runner.run(env, {})
    assert execution.outcome.error.type == "InvalidArguments"


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("where", ["args_json", "iteration_data_json"])
async def test_json_nested_too_deep_in_an_envelope_fails_as_invalid_arguments_naming_the_limit(runner, where):
    """Found by fuzzing: envelope JSON nested 100,000 deep raised RecursionError in the worker,
    which left its read batch's deliveries pending (needs_upstream) or failed the attempt as a
    WorkerError with a traceback (run)."""
    env = envelope("run-1", "n1", "collect", inputs=["a"])
    setattr(env, where, b'{"k": ' + DEEP + b"}" if where == "args_json" else DEEP)

    assert not runner.needs_upstream(env)
    execution = await runner.run(env, {})

    assert execution.outcome.error.type == "InvalidArguments"
    assert not execution.outcome.error.retryable
    assert "deeper than 64 levels" in execution.outcome.error.message


async def test_async_task_runs_on_the_event_loop(runner):
    assert value(await run(runner, "async_double", args={"x": 21})) == 42


async def test_bytes_results_are_carried_with_their_content_type(runner):
    execution = await run(runner, "raw_bytes")
    assert execution.result.value.content_type == payload.BYTES
    assert value(execution) == b"\x00\x01"


async def test_exception_becomes_error_info_with_type_message_and_traceback(runner):
    execution = await run(runner, "explode", args={"message": "kaput"})
    error = execution.outcome.error
    assert (error.type, error.message, error.retryable) == ("ValueError", "kaput", True)
    assert "in explode" in error.traceback and "raise ValueError(message)" in error.traceback
    assert "ValueError: kaput" in error.traceback
    assert "runner.py" not in error.traceback and "concurrent" not in error.traceback


async def test_traceback_keeps_only_the_configured_number_of_frames(channel):
    runner = Runner(load_registry([TASKS_MODULE]), worker_id="w", concurrency=1, traceback_frames=1)
    try:
        error = (await run(runner, "explode")).outcome.error
    finally:
        runner.close()
    assert error.traceback.count('File "') == 1


async def test_non_retryable_error_is_not_retryable(runner):
    error = (await run(runner, "refuse")).outcome.error
    assert (error.type, error.retryable) == ("NonRetryableError", False)


async def test_a_tasks_own_timeout_error_is_not_reported_as_task_timeout(runner):
    error = (await run(runner, "own_timeout_error", timeout_ms=60_000)).outcome.error
    assert error.type == "TimeoutError"


async def test_sync_task_over_its_timeout_fails_and_its_thread_is_left_to_finish(runner):
    execution = await run(runner, "hold", args={"key": "slow"}, timeout_ms=50)
    error = execution.outcome.error
    assert (error.type, error.retryable) == ("TaskTimeout", True)
    assert "did not finish within 0.05 s" in error.message
    assert runner.abandoned == 1
    PROBE.release("slow")
    await eventually(lambda: runner.abandoned == 0, what="the abandoned thread to finish")


async def test_async_task_over_its_timeout_is_cancelled(runner):
    error = (await run(runner, "async_sleep", args={"seconds": 30}, timeout_ms=50)).outcome.error
    assert error.type == "TaskTimeout"
    assert runner.abandoned == 0


async def test_unknown_task_type_fails_naming_type_queue_and_registered_types(runner):
    execution = await run(runner, "nope", queue="reports")
    error = execution.outcome.error
    assert (error.type, error.retryable) == ("UnknownTaskType", False)
    assert "'nope'" in error.message and "'reports'" in error.message
    assert "add" in error.message and "async_double" in error.message


async def test_unserializable_result_fails_without_retry(runner):
    error = (await run(runner, "unserializable")).outcome.error
    assert (error.type, error.retryable) == ("ResultNotSerializable", False)
    assert "object" in error.message


async def test_context_is_injected_with_identity_and_channel(runner, channel):
    result = value(await run(runner, "with_channel", args={"key": "k", "value": [1]}, attempt=2))
    assert result == {"got": [1], "keys": ["k"], "node": "node-1", "attempt": 2, "run": "run-1",
                      "worker": "w-1"}
    assert channel.data == {"k": [1]}


async def test_async_task_uses_the_channel_through_a_thread(runner, channel):
    channel.data["k"] = "v"
    assert value(await run(runner, "async_channel", args={"key": "k"})) == "v"


async def test_no_more_functions_run_at_once_than_the_concurrency(runner):
    envs = [envelope("r", f"n{i}", "tracked" if i % 2 else "async_tracked", args={"tag": f"t{i}"})
            for i in range(12)]
    executions = await asyncio.gather(*(runner.run(env, {}) for env in envs))
    assert all(e.outcome.status == SUCCEEDED for e in executions)
    assert sum(PROBE.calls.values()) == 12
    assert PROBE.max_running <= 2
