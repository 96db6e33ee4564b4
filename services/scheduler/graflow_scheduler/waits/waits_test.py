"""Waits through the whole scheduler: WAITING outcomes appended to gf:outcomes, the feedback RPCs,
the wait timer, child runs; run state in the real Redis, its dispatches read back there."""

import asyncio

import grpc
import pytest

from graflow_api.v1 import common_pb2, feedback_pb2, scheduler_pb2
from graflow_runtime import keys
from graflow_runtime.runids import new_run_id

from graflow_scheduler.testing.app import app_client, report, run_end, submit
from graflow_scheduler.testing.enqueued import enqueued, wait_enqueued
from graflow_scheduler.testing.runs import runs_ended
from graflow_scheduler.testing.specs import outcome, question, spec, waiting
from graflow_scheduler.waits.validation import request_problem, response_problem

Kind = feedback_pb2.FeedbackKind


def child_of(parent, node_id="a"):
    """A SubmitRun of a one-task child run started by ``node_id`` of run ``parent``."""
    return scheduler_pb2.SubmitRunRequest(
        spec=spec(["c"]), parent=scheduler_pb2.ParentRef(run_id=parent, node_id=node_id)
    )


async def run_info(client, run_id):
    return await client.GetRun(scheduler_pb2.GetRunRequest(run_id=run_id))


async def until(predicate, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def node_state(client, run_id, node_id):
    info = await run_info(client, run_id)
    return common_pb2.NodeState.Name(next(n.state for n in info.nodes if n.node_id == node_id))


async def status(client, run_id):
    return common_pb2.RunStatus.Name((await run_info(client, run_id)).status)


async def events(redis, run_id):
    return [
        (f[b"t"].decode(), f.get(b"m", b"").decode()) for _, f in await redis.xrange(keys.run_events(run_id))
    ]


async def respond(client, run_id, request_id="a.0.1", **answer):
    request = scheduler_pb2.RespondFeedbackRequest(
        run_id=run_id, request_id=request_id, response=feedback_pb2.FeedbackResponse(**answer)
    )
    return await client.RespondFeedback(request)


async def parked(client, redis, run_id, node_id="a", **kwargs):
    await report(redis, waiting(run_id, node_id, **kwargs))
    await until(lambda: _is(client, run_id, node_id, "NODE_STATE_WAITING"))


async def _is(client, run_id, node_id, state):
    return await node_state(client, run_id, node_id) == state


async def test_an_answer_resumes_the_waiting_node_with_it(client, redis):
    run_id = await submit(client, spec(["a", "b"], ["a>b"]))
    await parked(client, redis, run_id)
    assert await status(client, run_id) == "RUN_STATUS_PAUSED"
    (listed,) = (await client.ListFeedback(scheduler_pb2.ListFeedbackRequest(run_id=run_id))).requests
    assert (listed.run_id, listed.node_id, listed.attempt, listed.state) == (
        run_id,
        "a",
        1,
        feedback_pb2.FEEDBACK_STATE_PENDING,
    )
    assert listed.created_at_ms > 0 and listed.deadline_ms == 0
    assert listed in (await client.ListFeedback(scheduler_pb2.ListFeedbackRequest())).requests

    answered = await respond(client, run_id, approved=True, responded_by="ops")
    assert answered.state == feedback_pb2.FEEDBACK_STATE_ANSWERED and answered.response.approved
    await wait_enqueued(redis, lambda c: ("a", 2) in c.delivered(run_id))
    resumed = (await enqueued(redis)).envelopes(run_id, "a")[1].envelope
    assert resumed.attempt == 2
    assert [(r.request_id, r.approved, r.responded_by) for r in resumed.feedback] == [("a.0.1", True, "ops")]
    assert resumed.cycle == 0
    assert await status(client, run_id) == "RUN_STATUS_RUNNING"
    assert (await client.ListFeedback(scheduler_pb2.ListFeedbackRequest())).requests == []
    types = [t for t, _ in await events(redis, run_id)]
    assert types[-4:] == ["NODE_WAITING", "RUN_PAUSED", "NODE_READY", "RUN_RESUMED"]

    # The waiting attempt does not count against the retry budget; the answer carries on.
    await report(redis, outcome(run_id, "a", 2))
    await wait_enqueued(redis, lambda c: ("b", 1) in c.delivered(run_id))
    await report(redis, outcome(run_id, "b"))
    assert await run_end(client, run_id) == "TYPE_RUN_SUCCEEDED"


async def test_a_repeated_waiting_outcome_changes_nothing(client, redis):
    run_id = await submit(client, spec(["a"]))
    await parked(client, redis, run_id)
    await report(redis, waiting(run_id))
    await report(redis, outcome(run_id, "a"))  # a success of the waiting attempt: a duplicate
    await asyncio.sleep(0.3)
    assert [t for t, _ in await events(redis, run_id)].count("NODE_WAITING") == 1
    assert await node_state(client, run_id, "a") == "NODE_STATE_WAITING"


@pytest.mark.parametrize(
    ("request_fields", "problem"),
    [
        ({"prompt": " "}, "prompt is empty"),
        ({"kind": Kind.FEEDBACK_KIND_SELECTION}, "needs options"),
        ({"request_id": "a b"}, "must be 1-200 letters"),
        ({"kind": Kind.FEEDBACK_KIND_UNSPECIFIED}, "is not a FeedbackKind"),
        ({"metadata_json": b"[1]"}, "must be a JSON object"),
    ],
)
async def test_an_invalid_request_fails_the_node_with_the_reason(client, redis, request_fields, problem):
    run_id = await submit(client, spec(["a"]))
    await report(redis, waiting(run_id, request=question(**request_fields)))
    assert await run_end(client, run_id) == "TYPE_RUN_FAILED"
    info = await run_info(client, run_id)
    assert info.error.type == "InvalidFeedbackRequest" and problem in info.error.message


async def test_a_request_id_used_before_in_the_run_fails_the_node(client, redis):
    run_id = await submit(client, spec(["a"]))
    await parked(client, redis, run_id)
    await respond(client, run_id, approved=True)
    await report(redis, waiting(run_id, attempt=2))
    assert await run_end(client, run_id) == "TYPE_RUN_FAILED"
    info = await run_info(client, run_id)
    assert info.error.type == "InvalidWait" and "'a.0.1'" in info.error.message


async def test_answers_that_do_not_fit_are_refused_and_change_nothing(client, redis):
    run_id = await submit(client, spec(["a"]))
    request = question(kind=Kind.FEEDBACK_KIND_SELECTION, options=["x", "y"])
    await parked(client, redis, run_id, request=request)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await respond(client, run_id, selected="z")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not one of the options" in refused.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await respond(client, run_id, request_id="a.0.2", selected="x")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert await node_state(client, run_id, "a") == "NODE_STATE_WAITING"
    await respond(client, run_id, selected="y")
    await respond(client, run_id, selected="y")  # the same answer again: fine
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await respond(client, run_id, selected="x")
    assert (
        again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        and "answered already" in again.value.details()
    )


async def test_canceling_a_waiting_run_closes_its_requests(client, redis):
    run_id = await submit(client, spec(["a"]))
    await parked(client, redis, run_id)
    await client.CancelRun(scheduler_pb2.CancelRunRequest(run_id=run_id, reason="no"))
    assert await node_state(client, run_id, "a") == "NODE_STATE_CANCELED"
    assert (await client.ListFeedback(scheduler_pb2.ListFeedbackRequest())).requests == []
    assert await redis.zcard(keys.FEEDBACK_PENDING) == 0
    got = await client.GetFeedback(scheduler_pb2.GetFeedbackRequest(run_id=run_id, request_id="a.0.1"))
    assert got.state == feedback_pb2.FEEDBACK_STATE_CLOSED
    with pytest.raises(grpc.aio.AioRpcError) as closed:
        await respond(client, run_id, approved=True)
    assert closed.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "closed" in closed.value.details()


async def test_a_deadline_fails_the_node_or_keeps_it_waiting(make_app, redis):
    app = await make_app(wait_timer_interval_s=0.02)
    async with app_client(app) as client:
        run_id = await submit(client, spec(["a"]))
        await report(redis, waiting(run_id, request=question(timeout_ms=100)))
        assert await run_end(client, run_id) == "TYPE_RUN_FAILED"
        info = await run_info(client, run_id)
        assert (info.failed_node_id, info.error.type) == ("a", "FeedbackTimeout")
        assert "within 0.1 s" in info.error.message

        keep = feedback_pb2.FEEDBACK_TIMEOUT_ACTION_KEEP_WAITING
        run_id = await submit(client, spec(["a"]))
        await report(redis, waiting(run_id, request=question(timeout_ms=50, on_timeout=keep)))
        await until(lambda: _has_event(redis, run_id, "stays open"))
        assert await redis.zcard(keys.WAIT_DEADLINES) == 0
        assert await status(client, run_id) == "RUN_STATUS_PAUSED"
        await respond(client, run_id, approved=True)
        await wait_enqueued(redis, lambda c: ("a", 2) in c.delivered(run_id))


async def _has_event(redis, run_id, text):
    return any(text in message for _, message in await events(redis, run_id))


async def test_the_recovery_sweep_redelivers_a_resumed_node_with_its_answers(app, client, redis):
    run_id = await submit(client, spec(["a"]))
    await parked(client, redis, run_id)
    record = keys.dispatch_record(run_id)
    await redis.delete(record)
    await redis.set(record, "not a hash")  # the answer's own dispatch fails (WRONGTYPE)
    await respond(client, run_id, approved=True, reason="fine")
    assert ("a", 2) not in (await enqueued(redis)).delivered(run_id)
    await redis.delete(record)
    await app.sweep.sweep_once()
    (resumed,) = (
        d.envelope for d in (await enqueued(redis)).envelopes(run_id, "a") if d.envelope.attempt == 2
    )
    assert [(r.request_id, r.reason) for r in resumed.feedback] == [("a.0.1", "fine")]


async def test_a_child_runs_end_resumes_the_parent_node_that_waits_for_it(make_app, redis):
    app = await make_app(wait_timer_interval_s=0.02)
    async with app_client(app) as client:
        parent = await submit(client, spec(["a"]))
        child_request = child_of(parent)
        child = (await client.SubmitRun(child_request)).run_id
        info = await run_info(client, child)
        assert (info.parent.run_id, info.parent.node_id) == (parent, "a")
        assert list((await run_info(client, parent)).child_run_ids) == [child]
        await parked(client, redis, parent, child_run_id=child)
        assert await status(client, parent) == "RUN_STATUS_PAUSED"
        await report(redis, outcome(child, "c"))
        await wait_enqueued(redis, lambda c: ("a", 2) in c.delivered(parent))
        await until(lambda: _none_ended(redis))

        # A child that ended before its parent waits for it resumes the parent at once.
        early = (await client.SubmitRun(child_request)).run_id
        await report(redis, outcome(early, "c"))
        assert await run_end(client, early) == "TYPE_RUN_SUCCEEDED"
        await report(redis, waiting(parent, attempt=2, child_run_id=early))
        await wait_enqueued(redis, lambda c: ("a", 3) in c.delivered(parent))


async def test_a_live_child_listed_as_ended_does_not_resume_its_parent(make_app, redis):
    """gf:children:ended is an index, not signed (docs/security.md, "Integrity on the bus"): an entry
    naming a live child (written by somebody else than finish_run) is dropped, and the parent waits."""
    app = await make_app(wait_timer_interval_s=0.02)
    async with app_client(app) as client:
        parent = await submit(client, spec(["a"]))
        child = (await client.SubmitRun(child_of(parent))).run_id
        await parked(client, redis, parent, child_run_id=child)
        await redis.zadd(keys.CHILDREN_ENDED, {child: 1})

        await until(lambda: _none_ended(redis))
        await asyncio.sleep(0.2)  # ten timer passes
        assert await node_state(client, parent, "a") == "NODE_STATE_WAITING"
        assert (await enqueued(redis)).delivered(parent) == [("a", 1)]

        await report(redis, outcome(child, "c"))  # the child's real end still resumes it
        await wait_enqueued(redis, lambda c: ("a", 2) in c.delivered(parent))


async def _none_ended(redis):
    return await redis.zcard(keys.CHILDREN_ENDED) == 0


async def test_waiting_for_a_run_that_is_not_the_nodes_child_fails_the_node(client, redis):
    stranger = await submit(client, spec(["x"]))
    run_id = await submit(client, spec(["a"]))
    await report(redis, waiting(run_id, child_run_id=stranger))
    assert await run_end(client, run_id) == "TYPE_RUN_FAILED"
    assert (await run_info(client, run_id)).error.type == "InvalidWait"


async def test_canceling_a_parent_cancels_its_children(client, redis):
    parent = await submit(client, spec(["a"]))
    request = child_of(parent)
    child = (await client.SubmitRun(request)).run_id
    await client.CancelRun(scheduler_pb2.CancelRunRequest(run_id=parent, reason="stop"))
    info = await run_info(client, child)
    assert common_pb2.RunStatus.Name(info.status) == "RUN_STATUS_CANCELED"
    assert info.message == f"parent run {parent} was canceled"
    # The parent's end, then its child's (canceled before CancelRun returned), both announced.
    assert await runs_ended(redis) == [(parent, "CANCELED"), (child, "CANCELED")]
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await client.SubmitRun(request)
    assert ended.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_child_of_a_run_that_does_not_exist_is_not_found_and_not_created(client, redis):
    missing = new_run_id()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.SubmitRun(child_of(missing))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == f"parent run {missing} does not exist"
    assert await redis.zcard(keys.RUNS_INDEX) == 0


@pytest.mark.parametrize("node_id", ["has space", "x" * 129, "a\n"])
async def test_a_child_whose_parent_node_id_breaks_the_node_id_rule_is_invalid_and_not_created(
    client, redis, node_id
):
    parent = await submit(client, spec(["a"]))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.SubmitRun(child_of(parent, node_id))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parent.node_id" in info.value.details() and "1-128 letters" in info.value.details()
    assert await redis.zcard(keys.RUNS_INDEX) == 1
    assert await redis.scard(keys.run_children(parent)) == 0


async def test_a_child_whose_parent_node_is_not_a_node_of_the_parent_run_is_invalid_and_not_created(
    client, redis
):
    parent = await submit(client, spec(["a"]))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.SubmitRun(child_of(parent, "ghost"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == f"parent.node_id 'ghost' names no node of run {parent}"
    assert await redis.zcard(keys.RUNS_INDEX) == 1
    assert await redis.scard(keys.run_children(parent)) == 0


def test_request_and_response_checks() -> None:
    assert request_problem(question()) is None
    selection = question(kind=Kind.FEEDBACK_KIND_MULTI_SELECTION, options=["a", "b"])
    assert "set response.approved" in response_problem(question(), feedback_pb2.FeedbackResponse())
    assert "the answer sets text, which belong to other kinds" in response_problem(
        question(), feedback_pb2.FeedbackResponse(approved=True, text="yes")
    )
    assert "sets approved" in response_problem(selection, feedback_pb2.FeedbackResponse(approved=False))
    assert response_problem(selection, feedback_pb2.FeedbackResponse()) is None  # none of them
    assert response_problem(question(), feedback_pb2.FeedbackResponse(approved=False)) is None
    assert (
        request_problem(question(kind=Kind.FEEDBACK_KIND_SELECTION, options=["a", "a"]))
        == "options repeat a choice"
    )
    assert response_problem(selection, feedback_pb2.FeedbackResponse(selected_multiple=["a", "b"])) is None
    assert "repeats" in response_problem(
        selection, feedback_pb2.FeedbackResponse(selected_multiple=["a", "a"])
    )
    custom = question(kind=Kind.FEEDBACK_KIND_CUSTOM)
    assert "not valid JSON" in response_problem(custom, feedback_pb2.FeedbackResponse(custom_json=b"{"))
    for raw, problem in ((b"[1e400]", "1e400 is not a finite number"), (b"NaN", "NaN is not valid JSON"),
                         (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 64 levels")):
        assert f"custom_json is {problem}" in response_problem(
            custom, feedback_pb2.FeedbackResponse(custom_json=raw))
    assert "set response.custom_json" in response_problem(custom, feedback_pb2.FeedbackResponse())
    assert "is not the request's id" in response_problem(
        question(), feedback_pb2.FeedbackResponse(request_id="b")
    )


async def test_children_of_a_run_canceled_without_the_api_are_canceled_by_the_wait_timer(
    make_app, store, redis
):
    app = await make_app(wait_timer_interval_s=0.02)
    async with app_client(app) as client:
        parent = await submit(client, spec(["a"]))
        request = child_of(parent)
        child = (await client.SubmitRun(request)).run_id
        # As if the scheduler died right after the cancel: only the script ran.
        await store.cancel_run(parent, "by hand", now_ms=1)
        await until(lambda: _status_is(client, child, "RUN_STATUS_CANCELED"))
        await until(lambda: _none_to_cancel(redis))


async def _status_is(client, run_id, expected):
    return await status(client, run_id) == expected


async def _none_to_cancel(redis):
    return await redis.zcard(keys.CHILDREN_TO_CANCEL) == 0


async def test_a_failure_without_the_wait_it_ends_does_not_touch_a_waiting_node(client, redis):
    run_id = await submit(client, spec(["a"]))
    await parked(client, redis, run_id)
    await report(redis, outcome(run_id, "a", ok=False))  # retryable, attempt 1, names no wait
    await asyncio.sleep(0.3)
    assert await node_state(client, run_id, "a") == "NODE_STATE_WAITING"
    assert await status(client, run_id) == "RUN_STATUS_PAUSED"


async def test_terminating_a_run_skips_its_waiting_nodes_and_closes_their_requests(client, redis):
    run_id = await submit(client, spec(["a", "b"]))
    await parked(client, redis, run_id)
    finished = outcome(run_id, "b")
    finished.directives.add().terminate.message = "enough"
    await report(redis, finished)
    assert await run_end(client, run_id) == "TYPE_RUN_SUCCEEDED"
    assert await node_state(client, run_id, "a") == "NODE_STATE_SKIPPED"
    assert (await client.ListFeedback(scheduler_pb2.ListFeedbackRequest())).requests == []


async def test_request_ids_are_checked_and_unknown_runs_are_not_found(client, redis):
    run_id = await submit(client, spec(["a"]))
    await report(redis, waiting(run_id, request=question(request_id="x:r")))
    assert await run_end(client, run_id) == "TYPE_RUN_FAILED"
    assert "must be 1-200 letters" in (await run_info(client, run_id)).error.message
    with pytest.raises(grpc.aio.AioRpcError) as malformed:
        await client.GetFeedback(scheduler_pb2.GetFeedbackRequest(run_id=run_id, request_id="a.0.1:r"))
    assert malformed.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await client.ListFeedback(scheduler_pb2.ListFeedbackRequest(run_id="01M7YG93QD4ZD9RG279ECRXAGG"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_runs_idempotency_key_lasts_while_the_run_does(client, redis):
    request = scheduler_pb2.SubmitRunRequest(spec=spec(["a"]), idempotency_key="k1")
    run_id = (await client.SubmitRun(request)).run_id
    assert await redis.ttl(keys.idempotency("k1")) == -1  # no expiry while the run waits, for days
    await report(redis, outcome(run_id, "a"))
    assert await run_end(client, run_id) == "TYPE_RUN_SUCCEEDED"
    assert await redis.ttl(keys.idempotency("k1")) > 0


async def test_a_waiting_outcome_delivered_again_after_the_answer_repeats_the_resumed_dispatch(
    app, client, redis
):
    run_id = await submit(client, spec(["a"]))
    await parked(client, redis, run_id)
    await respond(client, run_id, approved=True)
    await wait_enqueued(redis, lambda c: c.delivered(run_id).count(("a", 2)) == 1)
    # As if the scheduler had died before acknowledging the WAITING outcome: it comes again.
    await report(redis, waiting(run_id))

    async def dispatched_again():
        return app.consumer.stats.dispatch_duplicates == 1

    await until(dispatched_again)  # the resumed attempt dispatched again, enqueued once
    assert (await enqueued(redis)).delivered(run_id) == [("a", 1), ("a", 2)]
    (again,) = [d.envelope for d in (await enqueued(redis)).envelopes(run_id, "a")][-1:]
    assert [r.request_id for r in again.feedback] == ["a.0.1"]
    assert await node_state(client, run_id, "a") == "NODE_STATE_READY"


async def test_listing_every_runs_pending_requests_answers_the_same_in_a_bounded_number_of_round_trips(
    client, redis
):
    """Found by fuzzing: ListFeedback without a run id read each pending request with two round trips
    to Redis (`limit` 1,000 took 6.7 s with many open requests). It reads them all in pipelines now;
    answered requests and those of ended runs are still left out, and the order is still oldest first."""
    nodes = [f"n{i}" for i in range(60)]
    run_id = await submit(client, spec(nodes))
    for node_id in nodes:
        await report(redis, waiting(run_id, node_id, request=question(request_id=f"{node_id}.0.1")))
    other = await submit(client, spec(["a"]))
    ended = await submit(client, spec(["a"]))
    for each in (other, ended):
        await parked(client, redis, each)

    async def all_waiting():
        return all([await _is(client, run_id, node_id, "NODE_STATE_WAITING") for node_id in nodes])

    await until(all_waiting, timeout=30)
    await respond(client, run_id, request_id="n0.0.1", approved=True)
    await client.CancelRun(scheduler_pb2.CancelRunRequest(run_id=ended))
    before = int((await redis.info("stats"))["total_reads_processed"])

    listed = (await client.ListFeedback(scheduler_pb2.ListFeedbackRequest(limit=1000))).requests

    reads = int((await redis.info("stats"))["total_reads_processed"]) - before
    expected = [(run_id, f"{node_id}.0.1") for node_id in nodes[1:]] + [(other, "a.0.1")]
    assert sorted((r.run_id, r.request_id) for r in listed) == sorted(expected)
    assert {r.state for r in listed} == {feedback_pb2.FEEDBACK_STATE_PENDING}
    assert [r.created_at_ms for r in listed] == sorted(r.created_at_ms for r in listed)
    # Two per request (118) before; a few now, with room for the scheduler's own loops meanwhile.
    assert reads < 40, reads
    one_run = (
        await client.ListFeedback(scheduler_pb2.ListFeedbackRequest(run_id=run_id, limit=1000))
    ).requests
    assert sorted(r.request_id for r in one_run) == [f"{node_id}.0.1" for node_id in sorted(nodes[1:])]
