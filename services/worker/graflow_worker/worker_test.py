"""The worker's data path against real Redis and real gRPC servers (doubles of the result-store and
coordinator APIs): read, dead letters, upstream results, run, group commit."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from graflow import payload
from graflow_api.v1 import messages_pb2
from graflow_runtime import keys
from graflow_runtime.limits import DEAD_LETTERS_MAXLEN
from graflow_runtime.testing.streams import fill

from graflow_worker import consumer
from graflow_worker.testing.services import (
    enqueue,
    envelope,
    eventually,
    outcomes,
    pending_count,
    wait_outcomes,
)
from graflow_worker.testing.tasks import PROBE

SUCCEEDED = messages_pb2.TaskOutcome.STATUS_SUCCEEDED
FAILED = messages_pb2.TaskOutcome.STATUS_FAILED



async def health_status(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        return response.status


async def test_delivery_runs_and_its_outcome_is_appended_together_with_its_ack(stack):
    worker = await stack.start_worker()
    await enqueue(stack.redis, envelope("r1", "a", "add", args={"a": 1, "b": 2}))
    [outcome] = await wait_outcomes(stack.redis, 1)
    # The outcome is visible only together with the acknowledgement (one atomic script).
    assert await pending_count(stack.redis) == 0
    assert (outcome.run_id, outcome.node_id, outcome.attempt) == ("r1", "a", 1)
    assert outcome.status == SUCCEEDED and outcome.has_result
    assert outcome.worker_id == worker.worker_id
    assert stack.store.value("r1", "a") == 3


async def test_worker_registers_its_queues_tasks_and_health_endpoint_and_serves_health(stack):
    worker = await stack.start_worker(queues="default,reports", concurrency=3)
    [registration] = stack.coordinator.registrations
    assert registration.worker_id == worker.worker_id
    assert list(registration.queues) == ["default", "reports"]
    assert {"add", "async_double", "with_channel"} <= set(registration.task_types)
    assert registration.concurrency == 3
    assert registration.health_address == worker.health_address
    assert await health_status(worker.health_address) == health_pb2.HealthCheckResponse.SERVING


async def test_worker_reads_every_configured_queue(stack):
    await stack.start_worker(queues="default,reports")
    await enqueue(stack.redis, envelope("r1", "a", "add", args={"a": 1}, queue="reports"),
                  envelope("r1", "b", "add", args={"a": 2}, queue="default"))
    found = await wait_outcomes(stack.redis, 2)
    assert {o.node_id for o in found} == {"a", "b"}
    assert await pending_count(stack.redis, "reports") == 0


async def test_upstream_results_of_a_read_batch_are_fetched_with_one_get_results(stack):
    stack.store.put("r1", "a", 5)
    envs = [envelope("r1", f"n{i}", "add", args={"b": i}, inputs=["a"]) for i in range(5)]
    await enqueue(stack.redis, *envs)
    await stack.start_worker(concurrency=8)
    found = await wait_outcomes(stack.redis, 5)
    assert all(o.status == SUCCEEDED for o in found)
    assert sorted(stack.store.value("r1", f"n{i}") for i in range(5)) == [5, 6, 7, 8, 9]
    [request] = stack.store.get_calls
    assert (request.run_id, list(request.node_ids)) == ("r1", ["a"])


async def test_no_get_results_for_tasks_whose_parameters_bind_no_upstream_result(stack):
    stack.store.put("r1", "a", 5)
    # No parameter, or every parameter a bound argument: nothing to fetch.
    await enqueue(stack.redis, envelope("r1", "n1", "refuse", inputs=["a"]),
                  envelope("r1", "n2", "add", args={"a": 1, "b": 2}, inputs=["a"]),
                  envelope("r1", "n3", "repeat", args={"text": "ab", "times": 2}, inputs=["a"]))
    await stack.start_worker(concurrency=8)
    found = {o.node_id: o for o in await wait_outcomes(stack.redis, 3)}
    assert found["n2"].status == SUCCEEDED and stack.store.value("r1", "n2") == 3
    assert stack.store.value("r1", "n3") == "abab"
    assert found["n1"].status == FAILED and found["n1"].error.type == "NonRetryableError"
    assert stack.store.get_calls == []


async def test_a_batch_fetches_upstream_results_only_for_the_deliveries_that_bind_them(stack):
    stack.store.put("r1", "a", 5)
    stack.store.put("r1", "b", 7)
    await enqueue(stack.redis, envelope("r1", "n1", "add", args={"b": 1}, inputs=["a"]),
                  envelope("r1", "n2", "add", args={"a": 1, "b": 2}, inputs=["b"]),
                  envelope("r1", "n3", "collect", inputs=["a"]))
    await stack.start_worker(concurrency=8)
    await wait_outcomes(stack.redis, 3)
    assert stack.store.value("r1", "n1") == 6
    assert stack.store.value("r1", "n2") == 3
    assert stack.store.value("r1", "n3") == {"a": 5}
    assert {n for call in stack.store.get_calls for n in call.node_ids} == {"a"}


async def test_a_refused_fetch_does_not_fail_a_delivery_that_binds_no_upstream_result(stack):
    stack.store.get_results_error = grpc.StatusCode.INVALID_ARGUMENT
    await stack.start_worker()
    await enqueue(stack.redis, envelope("r1", "n1", "add", args={"b": 1}, inputs=["a"]),
                  envelope("r1", "n2", "add", args={"a": 1, "b": 2}, inputs=["a"]))
    found = {o.node_id: o for o in await wait_outcomes(stack.redis, 2)}
    assert found["n1"].error.type == "UpstreamFetchFailed"
    assert found["n2"].status == SUCCEEDED and stack.store.value("r1", "n2") == 3


async def test_upstream_result_reaches_a_parameter_named_after_its_task_type(stack):
    await stack.start_worker()
    await enqueue(stack.redis, envelope("r1", "c", "add", args={"a": 3, "b": 0}))
    await wait_outcomes(stack.redis, 1)
    assert stack.store.results[("r1", "c")].task_type == "add"
    await enqueue(stack.redis, envelope("r1", "d", "plus_one", inputs=["c"]),
                  envelope("r1", "e", "collect_with_base", inputs=["c"], args={"base": 5}))
    await enqueue(stack.redis, envelope("r1", "f", "repeat", inputs=["c"], args={"text": "ab"}))
    found = {o.node_id: o for o in await wait_outcomes(stack.redis, 4)}
    assert stack.store.value("r1", "d") == 4
    assert stack.store.value("r1", "e") == {"base": 5, "rest": {"c": 3}}
    assert found["f"].error.type == "MissingArgument"
    assert "'times'" in found["f"].error.message and "'c' (task 'add')" in found["f"].error.message


async def test_missing_upstream_result_fails_the_attempt_retryably(stack):
    await stack.start_worker()
    await enqueue(stack.redis, envelope("r1", "b", "add", inputs=["a"]))
    [outcome] = await wait_outcomes(stack.redis, 1)
    assert outcome.status == FAILED and not outcome.has_result
    assert (outcome.error.type, outcome.error.retryable) == ("UpstreamResultMissing", True)
    assert await pending_count(stack.redis) == 0


async def test_upstream_results_refused_by_the_result_store_fail_the_attempt_retryably(stack):
    stack.store.get_results_error = grpc.StatusCode.INVALID_ARGUMENT
    await stack.start_worker()
    await enqueue(stack.redis, envelope("r1", "b", "add", inputs=["a"]))
    [outcome] = await wait_outcomes(stack.redis, 1)
    assert (outcome.error.type, outcome.error.retryable) == ("UpstreamFetchFailed", True)
    assert "INVALID_ARGUMENT" in outcome.error.message
    assert await pending_count(stack.redis) == 0


async def test_undecodable_entries_are_dead_lettered_and_the_next_entry_still_runs(stack):
    await stack.start_worker()
    stream = keys.queue_stream("default")
    bad_id = await stack.redis.xadd(stream, {keys.ENVELOPE_FIELD: b"\xff\xfenot protobuf"})
    no_field_id = await stack.redis.xadd(stream, {b"x": b"1"})
    incomplete = messages_pb2.TaskEnvelope(run_id="r1", attempt=1)  # no node id, no task type
    incomplete_id = await stack.redis.xadd(stream, {keys.ENVELOPE_FIELD: incomplete.SerializeToString()})
    await enqueue(stack.redis, envelope("r1", "good", "add", args={"a": 1}))
    [outcome] = await wait_outcomes(stack.redis, 1)
    assert outcome.node_id == "good" and outcome.status == SUCCEEDED
    letters = [messages_pb2.DeadLetter.FromString(f[b"d"])
               for _, f in await stack.redis.xrange(keys.DEAD_LETTERS_STREAM)]
    by_id = {letter.original_id: letter for letter in letters}
    assert set(by_id) == {bad_id.decode(), no_field_id.decode(), incomplete_id.decode()}
    assert all(letter.reason.startswith("undecodable envelope: ") for letter in letters)
    assert all(letter.queue == "default" and letter.dead_at_ms > 0 for letter in letters)
    assert by_id[bad_id.decode()].raw == b"\xff\xfenot protobuf"
    assert "node_id" in by_id[incomplete_id.decode()].reason
    assert by_id[incomplete_id.decode()].run_id == "r1"
    assert await pending_count(stack.redis) == 0


async def test_unknown_task_type_is_reported_as_a_non_retryable_failure(stack):
    await stack.start_worker()
    await enqueue(stack.redis, envelope("r1", "x", "not_registered"))
    [outcome] = await wait_outcomes(stack.redis, 1)
    assert (outcome.error.type, outcome.error.retryable) == ("UnknownTaskType", False)
    assert "'not_registered'" in outcome.error.message


async def test_never_more_tasks_run_at_once_than_the_concurrency(stack):
    await stack.start_worker(concurrency=3)
    envs = [envelope("r1", f"n{i}", "tracked" if i % 2 else "async_tracked", args={"tag": f"n{i}"})
            for i in range(24)]
    await enqueue(stack.redis, *envs)
    found = await wait_outcomes(stack.redis, 24)
    assert all(o.status == SUCCEEDED for o in found)
    assert sum(PROBE.calls.values()) == 24
    assert 1 <= PROBE.max_running <= 3
    assert all(beat.in_flight <= 3 for beat in stack.coordinator.heartbeats)


async def test_stale_result_still_reports_its_outcome(stack):
    stack.store.put("r1", "a", "newer", attempt=2)
    await stack.start_worker()
    await enqueue(stack.redis, envelope("r1", "a", "add", args={"a": 1}, attempt=1))
    [outcome] = await wait_outcomes(stack.redis, 1)
    assert outcome.attempt == 1 and outcome.status == SUCCEEDED
    assert stack.store.value("r1", "a") == "newer"
    assert await pending_count(stack.redis) == 0


async def test_result_rejected_by_the_result_store_fails_only_its_own_attempt(stack):
    stack.store.max_value_bytes = 1000
    envs = [envelope("r1", f"ok{i}", "repeat", args={"text": "x", "times": 10}) for i in range(3)]
    envs.insert(1, envelope("r1", "big", "repeat", args={"text": "x", "times": 5000}))
    await enqueue(stack.redis, *envs)
    await stack.start_worker(concurrency=8)
    found = {o.node_id: o for o in await wait_outcomes(stack.redis, 4)}
    assert found["big"].status == FAILED and not found["big"].has_result
    assert (found["big"].error.type, found["big"].error.retryable) == ("ResultRejected", False)
    assert all(found[f"ok{i}"].status == SUCCEEDED for i in range(3))
    assert stack.store.value("r1", "ok2") == "x" * 10
    assert ("r1", "big") not in stack.store.results
    assert await pending_count(stack.redis) == 0


async def test_task_context_channel_is_backed_by_the_result_store(stack):
    await stack.start_worker()
    await enqueue(stack.redis, envelope("r1", "c", "with_channel", args={"key": "k", "value": {"v": 1}}))
    [outcome] = await wait_outcomes(stack.redis, 1)
    assert outcome.status == SUCCEEDED, outcome.error
    assert stack.store.value("r1", "c")["got"] == {"v": 1}
    assert payload.decode(stack.store.channels["r1"]["k"]) == {"v": 1}


async def test_async_task_calling_the_channel_on_the_event_loop_gets_a_clear_error(stack):
    await stack.start_worker()
    await enqueue(stack.redis, envelope("r1", "c", "async_channel_direct", args={"key": "k"}))
    [outcome] = await wait_outcomes(stack.redis, 1)
    assert outcome.error.type == "RuntimeError"
    assert "asyncio.to_thread" in outcome.error.message


async def test_many_outcomes_are_committed_in_few_batches(stack):
    worker = await stack.start_worker(concurrency=16)
    await enqueue(stack.redis, *[envelope("r1", f"n{i}", "add", args={"a": i}) for i in range(200)])
    found = await wait_outcomes(stack.redis, 200)
    assert len({o.node_id for o in found}) == 200
    # The batch counter moves just after the commit that made the outcomes visible.
    await eventually(lambda: worker.committer.batches == stack.store.put_calls, what="batch counts to settle")
    assert worker.committer.batches < 200
    assert await outcomes(stack.redis) == found


async def test_an_entry_served_to_the_worker_whose_read_reply_was_lost_is_taken_up(stack, monkeypatch):
    monkeypatch.setattr(consumer, "RESYNC_INTERVAL_S", 0.2)
    worker = await stack.start_worker()
    # XADD and a read as the worker's consumer in one transaction: the entry enters the worker's
    # pending list before its blocked read can be served, exactly as when a reply is lost.
    stream = keys.queue_stream("default")
    pipe = stack.redis.pipeline(transaction=True)
    data = envelope("r1", "a", "add", args={"a": 1, "b": 2}).SerializeToString()
    pipe.xadd(stream, {keys.ENVELOPE_FIELD: data})
    pipe.xreadgroup(keys.WORKER_GROUP, worker.worker_id, {stream: ">"}, count=1)
    await pipe.execute()
    [outcome] = await wait_outcomes(stack.redis, 1)
    assert (outcome.node_id, outcome.status) == ("a", SUCCEEDED)
    assert await pending_count(stack.redis) == 0
    assert stack.store.value("r1", "a") == 3


async def test_a_high_lane_entry_runs_before_the_normal_lane_backlog(stack):
    await enqueue(stack.redis, envelope("r1", "first", "hold", args={"key": "first"}))
    await stack.start_worker(concurrency=1)
    await eventually(lambda: "first" in PROBE.started, what="the first task to start")
    backlog = [envelope("r1", f"n{i}", "add", args={"a": i}) for i in range(10)]
    await enqueue(stack.redis, *backlog)
    await enqueue(stack.redis, envelope("r1", "lost", "add", args={"a": 1}, attempt=2), high=True)

    PROBE.release("first")

    found = await wait_outcomes(stack.redis, 12)
    # One slot: outcomes are committed in the order the deliveries were taken.
    assert [o.node_id for o in found] == ["first", "lost", *(f"n{i}" for i in range(10))]
    assert await pending_count(stack.redis) == 0


async def test_a_read_takes_no_more_entries_than_free_slots_over_both_lanes(stack):
    await enqueue(stack.redis, *[envelope("r1", f"h{i}", "hold", args={"key": "held"}) for i in range(2)],
                  high=True)
    await enqueue(stack.redis, *[envelope("r1", f"n{i}", "hold", args={"key": "held"}) for i in range(3)])

    worker = await stack.start_worker(concurrency=3)

    await eventually(lambda: PROBE.running == 3, what="three held tasks running")
    taken = {}
    for stream in keys.queue_lanes("default"):
        rows = await stack.redis.xpending_range(stream, keys.WORKER_GROUP, "-", "+", 10,
                                                consumername=worker.worker_id)
        taken[stream] = len(rows)
    assert taken == {keys.queue_high_stream("default"): 2, keys.queue_stream("default"): 1}
    PROBE.release("held")
    assert len(await wait_outcomes(stack.redis, 5)) == 5


async def test_the_workers_dead_letters_are_capped_like_the_coordinators(stack):
    await fill(stack.redis, keys.DEAD_LETTERS_STREAM, DEAD_LETTERS_MAXLEN + 1000)
    await stack.start_worker()
    await stack.redis.xadd(keys.queue_stream("default"), {keys.ENVELOPE_FIELD: b"\xff\xfenot protobuf"})
    await enqueue(stack.redis, envelope("r1", "good", "add", args={"a": 1}))
    await wait_outcomes(stack.redis, 1)
    ((_, newest),) = await stack.redis.xrevrange(keys.DEAD_LETTERS_STREAM, count=1)
    assert messages_pb2.DeadLetter.FromString(newest[b"d"]).reason.startswith("undecodable envelope: ")
    # Trimmed by whole stream nodes (MAXLEN ~): at most one node (100 entries) above the cap.
    length = await stack.redis.xlen(keys.DEAD_LETTERS_STREAM)
    assert DEAD_LETTERS_MAXLEN <= length <= DEAD_LETTERS_MAXLEN + 100
