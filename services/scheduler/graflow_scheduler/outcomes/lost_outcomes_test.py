"""Attempts lost with their worker (reported by the coordinator), poison messages, and the counters
of fenced outcomes: the outcome consumer against the real Redis (its dispatches read back there)."""

import asyncio
import time
from typing import Any

import pytest

from graflow_api.v1 import common_pb2, messages_pb2, scheduler_pb2
from graflow_runtime import keys

from graflow_scheduler.outcomes import apply, consumer
from graflow_scheduler.testing.app import app_client, report, run_end, submit
from graflow_scheduler.testing.enqueued import enqueued, wait_enqueued
from graflow_scheduler.testing.specs import node, outcome, spec


class LogRecorder:
    """Stands in for a module's structlog logger (structlog's capture_logs misses loggers that were
    cached on first use): records (event, fields) of every call, at any level."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append((event, fields))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [fields for name, fields in self.lines if name.startswith(event)]


@pytest.fixture
def batch_log(monkeypatch: pytest.MonkeyPatch) -> LogRecorder:
    recorder = LogRecorder()
    monkeypatch.setattr(apply, "log", recorder)
    return recorder


@pytest.fixture
def consumer_log(monkeypatch: pytest.MonkeyPatch) -> LogRecorder:
    recorder = LogRecorder()
    monkeypatch.setattr(consumer, "log", recorder)
    return recorder


async def eventually(condition, what: str, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        await asyncio.sleep(0.02)


def lost(run_id: str, node_id: str, attempt: int, *, poison: bool = False) -> messages_pb2.TaskOutcome:
    """What the coordinator appends when it reclaims the attempt of a dead worker."""
    error = (
        common_pb2.ErrorInfo(type="PoisonMessage", message="the worker running it died 5 times")
        if poison
        else common_pb2.ErrorInfo(type="WorkerLost", message="worker w1 was declared dead", retryable=True)
    )
    return messages_pb2.TaskOutcome(
        run_id=run_id,
        node_id=node_id,
        attempt=attempt,
        status=messages_pb2.TaskOutcome.STATUS_FAILED,
        error=error,
        worker_id="w1",
        worker_lost=True,
    )


async def test_a_lost_attempt_is_redelivered_at_once_as_the_next_attempt_without_using_the_retry_budget(
    client, downstreams, redis, app
):
    run_id = await submit(client, spec(["a"]))  # no retry policy: one attempt allowed
    await report(redis, lost(run_id, "a", 1))
    await wait_enqueued(redis, lambda c: len(c.envelopes(run_id, "a")) == 2)

    first, second = (await enqueued(redis)).envelopes(run_id, "a")
    assert (second.envelope.attempt, second.due_ms, second.envelope.lost_attempts) == (2, 0, 1)
    # It replaces a lost attempt: dispatch puts it in the queue's high lane.
    assert (first.high, second.high) == (False, True)
    assert await redis.hget(keys.run_joins(run_id), "a:lost") == b"1"
    await report(redis, outcome(run_id, "a", attempt=2))
    assert await run_end(client, run_id) == "TYPE_RUN_SUCCEEDED"
    assert app.consumer.stats.worker_lost == 1


async def test_real_failures_alone_consume_the_retry_budget(client, downstreams, redis):
    retry = common_pb2.RetryPolicy(max_attempts=2, initial_interval_ms=300)
    run_id = await submit(client, spec([node("a", retry=retry)]))
    await report(redis, lost(run_id, "a", 1))
    await wait_enqueued(redis, lambda c: len(c.envelopes(run_id, "a")) == 2)
    failed_ms = int(time.time() * 1000)
    await report(redis, outcome(run_id, "a", attempt=2, ok=False))  # first real failure: retried
    found = await wait_enqueued(redis, lambda c: len(c.envelopes(run_id, "a")) == 3)

    third = found.envelopes(run_id, "a")[2]
    assert (third.envelope.attempt, third.envelope.lost_attempts) == (3, 1)
    assert failed_ms + 300 <= third.due_ms <= int(time.time() * 1000) + 300  # the first backoff
    assert not third.high  # a retry after a real failure: the normal lane
    await report(redis, outcome(run_id, "a", attempt=3, ok=False))  # second real failure: budget used
    assert await run_end(client, run_id) == "TYPE_RUN_FAILED"


async def test_the_late_outcome_of_a_lost_attempt_is_rejected_and_counted_as_stale(
    client, downstreams, redis, app, batch_log
):
    run_id = await submit(client, spec(["a", "b"], ["a>b"]))
    await report(redis, lost(run_id, "a", 1))
    await wait_enqueued(redis, lambda c: len(c.envelopes(run_id, "a")) == 2)

    # The paused worker wakes up and reports attempt 1 after all.
    await report(redis, outcome(run_id, "a", attempt=1, worker="paused"))
    await eventually(lambda: app.consumer.stats.stale == 1, "the stale outcome to be counted")

    rejected = batch_log.named("stale outcome rejected")
    assert [(e["node_id"], e["attempt"], e["worker_id"]) for e in rejected] == [("a", 1, "paused")]
    run = await client.GetRun(scheduler_pb2.GetRunRequest(run_id=run_id))
    assert {n.node_id: n.state for n in run.nodes}["b"] == common_pb2.NODE_STATE_PENDING
    assert (await enqueued(redis)).envelopes(run_id, "b") == []
    await report(redis, outcome(run_id, "a", attempt=2))
    await report(redis, outcome(run_id, "a", attempt=2))  # a duplicate of the applied one
    await wait_enqueued(redis, lambda c: c.envelopes(run_id, "b"))
    await report(redis, outcome(run_id, "b"))
    assert await run_end(client, run_id) == "TYPE_RUN_SUCCEEDED"
    assert (app.consumer.stats.stale, app.consumer.stats.duplicates) == (1, 1)


async def test_a_poison_message_fails_its_node_with_the_reason(client, downstreams, redis):
    retry = common_pb2.RetryPolicy(max_attempts=5, initial_interval_ms=10)
    run_id = await submit(client, spec([node("a", retry=retry)]))
    await report(redis, lost(run_id, "a", 1, poison=True))

    assert await run_end(client, run_id) == "TYPE_RUN_FAILED"
    run = await client.GetRun(scheduler_pb2.GetRunRequest(run_id=run_id))
    assert (run.failed_node_id, run.error.type) == ("a", "PoisonMessage")
    assert len((await enqueued(redis)).envelopes(run_id, "a")) == 1  # not retried


async def test_a_failure_that_merely_calls_itself_worker_lost_uses_the_retry_budget(client, redis):
    run_id = await submit(client, spec(["a"]))
    # A task raising an exception class named WorkerLost: not reported by the coordinator.
    await report(redis, outcome(run_id, "a", ok=False, error_type="WorkerLost"))

    assert await run_end(client, run_id) == "TYPE_RUN_FAILED"


async def test_the_consumer_logs_its_totals_when_it_stops(client, redis, app, consumer_log):
    run_id = await submit(client, spec(["a", "b"], ["a>b"]))
    await report(redis, outcome(run_id, "a"), outcome(run_id, "a"), outcome(run_id, "b"))
    assert await run_end(client, run_id) == "TYPE_RUN_SUCCEEDED"

    await app.consumer.stop()

    totals = consumer_log.named("outcome consumer totals")[-1]
    assert (totals["applied"], totals["duplicates"], totals["stale"], totals["worker_lost"]) == (2, 1, 0, 0)


async def test_the_consumer_logs_its_totals_periodically_when_they_changed(redis, make_app, consumer_log):
    app = await make_app(stats_log_interval_s=0.05)
    assert consumer_log.named("outcome consumer totals") == []  # nothing happened yet: no line
    async with app_client(app) as scheduler:
        run_id = await submit(scheduler, spec(["a"]))
        await report(redis, outcome(run_id, "a"))
        await eventually(
            lambda: any(e["applied"] == 1 for e in consumer_log.named("outcome consumer totals")),
            "a totals line with the applied outcome",
        )
