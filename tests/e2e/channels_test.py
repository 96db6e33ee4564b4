"""End to end: run channels shared across workers (values, parameter fallback, atomic list and
number updates, client reads) and checkpoints that let a task resume after a failure or a crash,
on real service and worker processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from graflow import Client, parallel, workflow
from graflow.devstack import LocalStack
from graflow.errors import WorkflowNotFoundError
from tests.e2e.conftest import module_stack
from tests.e2e.tasks import (
    ChannelNote,
    chan_checkpointed,
    chan_count,
    chan_params,
    chan_reader,
    chan_writer,
    greet,
)

# One slot per worker: two tasks that wait for each other must run on different workers.
ONE_SLOT = {"GRAFLOW_WORKER_CONCURRENCY": "1"}


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    with module_stack(request, workers=2, env=ONE_SLOT) as stack:
        yield stack


def step_counts(fx: redis.Redis, run_id: str, node_id: str, steps: int) -> list[int]:
    raw = fx.mget([f"effects:{run_id}:{node_id}:step{n}" for n in range(1, steps + 1)])
    return [int(v or 0) for v in raw]


def test_values_written_on_one_worker_are_read_on_another_and_by_the_client(client: Client):
    with workflow("channel-across-workers") as wf:
        parallel(chan_writer, chan_reader) >> chan_params
    run = client.submit(wf)
    out = run.result(timeout=60)
    results = run.results(["chan_writer", "chan_reader"])
    writer, reader = results["chan_writer"], results["chan_reader"]
    assert writer != reader["worker"]
    assert reader == {"worker": reader["worker"], "greeting": "hello from the writer", "note_author": writer,
                      "note_words": ["a", "b"], "typed": True}
    # The downstream parameter `greeting` is no upstream task: it came from the channel.
    assert out == {"writer": writer, "greeting": "hello from the writer", "fallback": "default"}

    channel = run.channel()
    assert channel.get("greeting") == "hello from the writer"
    assert channel.exists("read_by") and not channel.exists("absent")
    assert channel.get("absent", "dflt") == "dflt"
    assert channel.get_typed("note", ChannelNote) == ChannelNote(author=writer, words=["a", "b"])
    assert set(channel.keys()) == {"greeting", "note", "read_by"}


def test_a_registered_workflow_gets_its_arguments_over_its_defaults_as_parameters(client: Client):
    with workflow("greeting") as wf:
        wf.add(greet)
    client.register_workflow(wf, name="greeting", defaults={"greeting": "hi", "punctuation": "!"})

    run = client.submit_registered("greeting", arguments={"greeting": "hello"}, idempotency_key="greet-1")
    again = client.submit_registered("greeting", arguments={"greeting": "other"}, idempotency_key="greet-1")

    assert run.result(timeout=60) == "hello!"
    assert (again.id, again.created) == (run.id, False)
    assert run.channel().get("greeting") == "hello"
    with pytest.raises(WorkflowNotFoundError, match="no-such-workflow"):
        client.submit_registered("no-such-workflow")


def test_a_spec_submitted_with_arguments_gets_them_as_parameters(client: Client):
    with workflow("greeting-spec") as wf:
        wf.add(greet)
    assert client.submit(wf, arguments={"greeting": "hey"}).result(timeout=60) == "hey."


def test_adds_and_appends_from_a_parallel_group_lose_nothing(client: Client):
    members = range(1, 7)
    with workflow("channel-atomic") as wf:
        parallel(*(chan_count(task_id=f"c{i}", i=i, times=20) for i in members))
    run = client.submit(wf)
    run.result(timeout=60)
    channel = run.channel()
    assert channel.get("total") == 20 * sum(members)
    log = channel.get("log")
    assert sorted(log) == sorted(f"{i}:{step}" for i in members for step in range(20))
    assert sorted(channel.get("members")) == list(members)


def test_a_task_that_raises_after_a_checkpoint_resumes_from_it_on_retry(client: Client, fx):
    with workflow("checkpoint-retry") as wf:
        chan_checkpointed(task_id="work", steps=5, fail_at=3)
    run = client.submit(wf)
    assert run.result(timeout=60) == {"attempt": 2, "resumed_from": 3, "done": 5}
    assert step_counts(fx, run.id, "work", 5) == [1, 1, 1, 1, 1]


def test_a_task_whose_worker_dies_after_a_checkpoint_resumes_from_it_elsewhere(
    client: Client, fx, stack: LocalStack
):
    with workflow("checkpoint-crash") as wf:
        chan_checkpointed(task_id="work", steps=4, fail_at=2, crash=True)
    run = client.submit(wf)
    try:
        assert run.result(timeout=60) == {"attempt": 2, "resumed_from": 2, "done": 4}
    finally:
        for index, process in enumerate(stack.workers):
            if not process.running:
                stack.restart(f"worker-{index}")
    assert step_counts(fx, run.id, "work", 4) == [1, 1, 1, 1]
