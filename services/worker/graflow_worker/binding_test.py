"""Parameter binding's channel fallback: bound args and upstream results first, then channel keys
of the parameter's name, then defaults; one batched channel read, none when nothing is missing;
upstream results fetched only for tasks whose parameters can bind them."""

from __future__ import annotations

from typing import Any

import pytest

from graflow import payload
from graflow_api.v1 import messages_pb2

from graflow_worker.binding import bind, binds_upstream, channel_candidates
from graflow_worker.registry import load_registry
from graflow_worker.runner import Execution, Runner
from graflow_worker.testing.services import TASKS_MODULE, envelope

SUCCEEDED = messages_pb2.TaskOutcome.STATUS_SUCCEEDED
FAILED = messages_pb2.TaskOutcome.STATUS_FAILED


class CountingChannel:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.reads: list[list[str]] = []

    async def get_many_async(self, keys: list[str]) -> dict[str, Any]:
        self.reads.append(list(keys))
        return {k: self.data[k] for k in keys if k in self.data}

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        raise AssertionError("binding reads the channel on the event loop")


@pytest.fixture
def registry():
    return load_registry([TASKS_MODULE])


async def run(registry, channel: CountingChannel, task_type: str, *, args: dict[str, Any] | None = None,
              upstream: dict[str, Any] | None = None) -> Execution:
    runner = Runner(registry, worker_id="w-1", concurrency=1, channel_factory=lambda run_id: channel)
    try:
        env = envelope("run-1", "node-1", task_type, inputs=list(upstream or {}), args=args or {})
        return await runner.run(env, {k: payload.encode(v) for k, v in (upstream or {}).items()}, None)
    finally:
        runner.close()


def value(execution: Execution) -> Any:
    assert execution.outcome.status == SUCCEEDED, execution.outcome.error
    return payload.decode(execution.result.value)


async def test_channel_value_is_used_when_no_bound_arg_or_upstream_supplies_the_parameter(registry):
    channel = CountingChannel({"y": "channel-y", "z": "channel-z"})
    execution = await run(registry, channel, "describe", args={"x": "bound-x"})
    assert value(execution) == {"x": "bound-x", "y": "channel-y", "z": "channel-z"}
    assert channel.reads == [["y", "z"]]


async def test_bound_arg_and_upstream_result_win_over_the_channel(registry):
    channel = CountingChannel({"x": "channel-x", "y": "channel-y", "z": "channel-z"})
    execution = await run(registry, channel, "describe", args={"x": "bound-x"}, upstream={"y": "upstream-y"})
    assert value(execution) == {"x": "bound-x", "y": "upstream-y", "z": "channel-z"}
    assert channel.reads == [["z"]]


async def test_default_is_used_when_the_channel_lacks_the_key(registry):
    channel = CountingChannel({})
    execution = await run(registry, channel, "describe", args={"x": 1})
    assert value(execution) == {"x": 1, "y": "default-y", "z": "default-z"}


async def test_required_parameter_can_come_from_the_channel_and_fails_without_it(registry):
    ok = await run(registry, CountingChannel({"x": "channel-x"}), "describe")
    assert value(ok)["x"] == "channel-x"
    missing = await run(registry, CountingChannel({}), "describe")
    assert missing.outcome.status == FAILED
    assert missing.outcome.error.type == "MissingArgument"
    assert "no channel key" in missing.outcome.error.message


async def test_no_channel_read_when_every_parameter_is_bound(registry):
    channel = CountingChannel({"x": "unused"})
    execution = await run(registry, channel, "describe", args={"x": 1, "y": 2, "z": 3})
    assert value(execution) == {"x": 1, "y": 2, "z": 3}
    assert channel.reads == []


def test_a_parameter_named_after_an_upstream_node_without_result_is_not_read_from_the_channel(registry):
    task = registry.tasks["describe"]
    names = channel_candidates(task, bound_args={}, input_node_ids=["x"], upstream={})
    assert names == ["y", "z"]
    call = bind(task, node_id="n", bound_args={}, input_node_ids=["y"], upstream={"y": 1},
                channel={"x": "cx", "z": "cz"})
    assert call.kwargs == {"x": "cx", "y": 1, "z": "cz"}


def test_upstream_task_type_names_are_not_channel_candidates(registry):
    task = registry.tasks["describe"]
    names = channel_candidates(task, bound_args={}, input_node_ids=["f1"], upstream={"f1": 1},
                               upstream_types={"f1": "x"})
    assert names == ["y", "z"]


def test_a_task_binds_upstream_results_unless_bound_arguments_supply_every_parameter(registry):
    tasks = registry.tasks
    assert not binds_upstream(tasks["refuse"], ())
    assert not binds_upstream(tasks["add"], {"a": 1, "b": 2})
    assert binds_upstream(tasks["add"], {"a": 1})  # b has a default, but an upstream node 'b' comes first
    assert binds_upstream(tasks["collect"], ())  # **kwargs takes every upstream result
    assert binds_upstream(tasks["collect_with_base"], {"base": 1})
    assert not binds_upstream(tasks["with_channel"], {"key": "k", "value": 1})  # the context is not bound


def test_the_runner_fetches_upstream_results_only_for_parameters_that_bind_them(registry):
    runner = Runner(registry, worker_id="w", concurrency=1)
    try:
        assert runner.needs_upstream(envelope("r", "n", "add", args={"b": 1}, inputs=["a"]))
        assert not runner.needs_upstream(envelope("r", "n", "add", args={"a": 1, "b": 1}, inputs=["a"]))
        assert not runner.needs_upstream(envelope("r", "n", "add", args={"b": 1}))  # no upstream node
        assert not runner.needs_upstream(envelope("r", "n", "refuse", inputs=["a"]))
        assert not runner.needs_upstream(envelope("r", "n", "not_registered", inputs=["a"]))
        iterating = envelope("r", "n", "refine", inputs=["a"])
        assert runner.needs_upstream(iterating)  # draft
        iterating.args_json = payload.dumps({"draft": 1})
        iterating.iteration_data_json = b"[1]"
        assert not runner.needs_upstream(iterating)  # data: the previous cycle's next_iteration
    finally:
        runner.close()
