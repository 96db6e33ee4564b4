"""Feedback notifications through the whole scheduler (started in-process on the real Redis of the
file) to a real HTTP receiver on a loopback port: the payload and its link, the signature, retries
with growing gaps that hold nothing else up, giving up, refusal, and a dead replica's notification
taken over by another."""

from __future__ import annotations

import asyncio
import json
import time

from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from graflow.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from graflow_api.v1 import common_pb2, feedback_pb2, scheduler_pb2
from graflow_runtime import keys
from graflow_runtime.testing.receiver import receiving

from graflow_scheduler.testing.app import app_client, report, run_end, submit
from graflow_scheduler.testing.enqueued import wait_enqueued
from graflow_scheduler.testing.specs import outcome, question, spec, waiting

SECRET = "webhook-test-secret"
STREAM = keys.feedback_opened(0)
# Small delays: 0.2 s after the first failure, 0.4 s after the second (each less up to 20% jitter).
FAST = {
    "feedback_webhook_secret": SECRET,
    "feedback_webhook_timeout_s": 1.0,
    "feedback_webhook_max_attempts": 3,
    "feedback_webhook_backoff_initial_s": 0.2,
    "feedback_webhook_backoff_max_s": 1.0,
    "feedback_webhook_claim_idle_ms": 2500,
    "console_url": "https://console.example/graflow/",
}


def deliveries(result: str) -> float:
    return REGISTRY.get_sample_value("graflow_webhook_deliveries_total", {"result": result}) or 0.0


async def until(predicate, timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout_s} s"
        await asyncio.sleep(0.02)


async def settled(redis) -> None:
    """Wait until no notification is pending in the group (each was acknowledged)."""

    async def none_pending() -> bool:
        return (await redis.xpending(STREAM, keys.FEEDBACK_NOTIFIER_GROUP))["pending"] == 0

    await until(none_pending, what="every notification acknowledged")


async def respond(client, run_id: str, request_id: str = "a.0.1") -> None:
    await client.RespondFeedback(
        scheduler_pb2.RespondFeedbackRequest(
            run_id=run_id, request_id=request_id, response=feedback_pb2.FeedbackResponse(approved=True)
        )
    )


async def test_without_a_webhook_nothing_is_appended_for_notification(client, redis):
    run_id = await submit(client, spec(["a"]))
    await report(redis, waiting(run_id))
    await until(lambda: _listed(client, run_id), what="the request listed")
    assert await redis.exists(STREAM) == 0


async def _listed(client, run_id: str) -> bool:
    listed = await client.ListFeedback(scheduler_pb2.ListFeedbackRequest(run_id=run_id))
    return bool(listed.requests)


async def test_a_new_request_is_posted_once_signed_with_a_link_to_its_console_page(make_app, redis):
    delivered = deliveries("delivered")
    async with receiving() as receiver:
        app = await make_app(feedback_webhook_url=receiver.url, **FAST)
        async with app_client(app) as client:
            run_id = await submit(client, spec(["a", "b"], ["a>b"]))
            request = question(
                kind=feedback_pb2.FEEDBACK_KIND_SELECTION,
                prompt="Ship <v2> & tell?",
                options=["yes", "later"],
            )
            await report(redis, waiting(run_id, request=request))
            (got,) = await receiver.wait_for(1)
            # The same WAITING outcome again (redelivered) records nothing new: nothing new is sent.
            await report(redis, waiting(run_id, request=request))
            await settled(redis)

    assert got.path == "/hook" and got.headers["content-type"] == "application/json"
    timestamp, signature = got.headers[TIMESTAMP_HEADER.lower()], got.headers[SIGNATURE_HEADER.lower()]
    assert abs(int(timestamp) - time.time()) < 60
    assert verify_signature(SECRET, timestamp, got.body, signature)
    assert not verify_signature("another-secret", timestamp, got.body, signature)
    assert not verify_signature(SECRET, timestamp, got.body + b" ", signature)
    assert not verify_signature(SECRET, int(timestamp) + 1, got.body, signature)

    body = json.loads(got.body)
    url = f"https://console.example/graflow/runs/{run_id}/feedback/a.0.1"
    assert body["graflow"] == {
        "run_id": run_id, "request_id": "a.0.1", "node_id": "a", "kind": "selection",
        "prompt": "Ship <v2> & tell?", "options": ["yes", "later"],
        "created_at_ms": body["graflow"]["created_at_ms"], "deadline_ms": 0, "url": url,
    }
    assert body["graflow"]["created_at_ms"] > 0
    # Slack: the fallback text links to the page, the prompt's markup is inert, a button opens it.
    assert f"<{url}|Answer in the console>" in body["text"]
    assert "Ship &lt;v2&gt; &amp; tell?" in body["blocks"][0]["text"]["text"]
    assert "options: yes, later" in body["blocks"][1]["elements"][0]["text"]
    assert body["blocks"][2]["elements"][0]["url"] == url
    assert len(receiver.received) == 1 and await redis.xlen(STREAM) == 1
    assert deliveries("delivered") == delivered + 1


async def test_failed_deliveries_are_retried_with_growing_gaps_while_the_run_goes_on(make_app, redis):
    retried, delivered = deliveries("retried"), deliveries("delivered")
    async with receiving(statuses=(500, 503, 200)) as receiver:
        with capture_logs() as logs:
            app = await make_app(feedback_webhook_url=receiver.url + "/secret-path", **FAST)
            async with app_client(app) as client:
                run_id = await submit(client, spec(["a", "b", "c"], ["b>c"]))
                await report(redis, waiting(run_id))
                await receiver.wait_for(1)
                # While the notification fails, the run's other branch is applied and dispatched.
                await report(redis, outcome(run_id, "b"))
                await wait_enqueued(redis, lambda found: ("c", 1) in found.delivered(run_id))
                first, second, third = await receiver.wait_for(3)
                await settled(redis)
    assert len(receiver.received) == 3
    # Once at start: the receiver's host (never the URL's path: often a secret), signed or not.
    (started,) = (e for e in logs if e["event"] == "feedback webhook on")
    assert started["host"] == receiver.url.split("//")[1].split("/")[0] and started["signed"] == "yes"
    assert not any("secret-path" in repr(e) for e in logs if e["event"] == "feedback webhook on")
    # Each retry says when the next attempt comes.
    delays = [e["retry_in_s"] for e in logs if e["event"] == "feedback notification failed; will retry"]
    assert len(delays) == 2 and 0.15 < delays[0] < delays[1] <= 0.4
    assert {json.loads(r.body)["graflow"]["request_id"] for r in (first, second, third)} == {"a.0.1"}
    # Backoff of 0.16-0.2 s, then 0.32-0.4 s, each plus a POST: only the lower bounds are sure (a
    # loaded machine stretches a gap, and the jitter lets the two overlap by their POSTs' times).
    assert second.at - first.at >= 0.15
    assert third.at - second.at >= 0.3
    assert deliveries("retried") == retried + 2 and deliveries("delivered") == delivered + 1


async def test_answering_while_deliveries_fail_finishes_the_run_and_ends_the_retries(make_app, redis):
    skipped = deliveries("skipped")
    async with receiving(statuses=(500,)) as receiver:
        many = {**FAST, "feedback_webhook_max_attempts": 50}
        app = await make_app(feedback_webhook_url=receiver.url, **many)
        async with app_client(app) as client:
            run_id = await submit(client, spec(["a", "b"], ["a>b"]))
            await report(redis, waiting(run_id))
            await receiver.wait_for(1)
            await respond(client, run_id)
            await wait_enqueued(redis, lambda found: ("a", 2) in found.delivered(run_id))
            await report(redis, outcome(run_id, "a", 2))
            await wait_enqueued(redis, lambda found: ("b", 1) in found.delivered(run_id))
            await report(redis, outcome(run_id, "b"))
            assert await run_end(client, run_id) == "TYPE_RUN_SUCCEEDED"
            # The next attempt finds the request answered: it is not sent (50 attempts would take
            # minutes), the notification is settled.
            await settled(redis)
    assert deliveries("skipped") == skipped + 1


async def test_a_receiver_that_never_answers_is_given_up_and_the_run_is_unaffected(make_app, redis):
    failed = deliveries("failed")
    async with receiving(hang=True) as receiver:
        app = await make_app(feedback_webhook_url=receiver.url, **FAST)
        async with app_client(app) as client:
            run_id = await submit(client, spec(["a"]))
            await report(redis, waiting(run_id))
            await receiver.wait_for(3)  # each attempt times out after 1 s
            await settled(redis)
            assert deliveries("failed") == failed + 1
            await respond(client, run_id)
            await wait_enqueued(redis, lambda found: ("a", 2) in found.delivered(run_id))
            await report(redis, outcome(run_id, "a", 2))
            assert await run_end(client, run_id) == "TYPE_RUN_SUCCEEDED"
    assert len(receiver.received) == 3


async def test_a_refusing_receiver_is_not_retried(make_app, redis):
    failed = deliveries("failed")
    async with receiving(statuses=(401,)) as receiver:
        app = await make_app(feedback_webhook_url=receiver.url, **FAST)
        async with app_client(app) as client:
            run_id = await submit(client, spec(["a"]))
            await report(redis, waiting(run_id))
            await receiver.wait_for(1)
            await settled(redis)  # after its one attempt
    assert len(receiver.received) == 1
    assert deliveries("failed") == failed + 1


async def test_a_notification_held_by_a_dead_replica_is_delivered_by_another(make_app, redis):
    async with receiving() as receiver:
        first = await make_app(feedback_webhook_url=receiver.url, consumer_name="first", **FAST)
        assert first.notifier is not None
        await first.notifier.stop()  # it records requests, and reads none: we read for a "dead" one
        async with app_client(first) as client:
            run_id = await submit(client, spec(["a"]))
            await report(redis, waiting(run_id))
            await until(lambda: redis.xlen(STREAM), what="the request appended")
        taken = await redis.xreadgroup(keys.FEEDBACK_NOTIFIER_GROUP, "dead", {STREAM: ">"}, count=10)
        taken_at = time.monotonic()
        assert len(taken[0][1]) == 1
        await make_app(feedback_webhook_url=receiver.url, consumer_name="survivor", **FAST)
        (got,) = await receiver.wait_for(1)
        await settled(redis)
    assert json.loads(got.body)["graflow"]["run_id"] == run_id
    assert got.at - taken_at >= 2.5  # only once it was idle for claim_idle_ms
    info = await redis.xinfo_consumers(STREAM, keys.FEEDBACK_NOTIFIER_GROUP)
    consumers = {c["name"]: c["pending"] for c in info}
    assert consumers[b"dead"] == 0


async def test_a_slow_receiver_holds_at_most_the_concurrency_and_nothing_else(make_app, redis):
    settings = {**FAST, "feedback_webhook_concurrency": 2, "feedback_webhook_max_attempts": 1}
    async with receiving(hang=True) as receiver:
        app = await make_app(feedback_webhook_url=receiver.url, **settings)
        async with app_client(app) as client:
            run_ids = [await submit(client, spec(["a", "b"])) for _ in range(3)]
            await report(redis, *(waiting(run_id) for run_id in run_ids))
            first, _ = await receiver.wait_for(2)
            # Both slots hang: the runs' other nodes are applied and dispatched all the same.
            await report(redis, *(outcome(run_id, "b") for run_id in run_ids))

            async def every_b_succeeded() -> bool:
                for run_id in run_ids:
                    info = await client.GetRun(scheduler_pb2.GetRunRequest(run_id=run_id))
                    if {n.node_id: n.state for n in info.nodes}["b"] != common_pb2.NODE_STATE_SUCCEEDED:
                        return False
                return True

            await until(every_b_succeeded, what="every run's b applied")
            third = (await receiver.wait_for(3))[2]
            await settled(redis)
    # The third was read only once a POST had timed out (1 s) and freed its slot. ``first.at`` is
    # when the receiver read the first POST, some time after its timeout started: a loose bound.
    assert third.at - first.at >= 0.5


async def test_readers_of_several_cells_share_the_concurrency(four_cells, one_slot_scripts, make_app, redis):
    # Every cell's reader blocks in its read at once: each took all the free slots, so three
    # requests in three cells started three POSTs with a concurrency of 2, and the third, waiting
    # in the HTTP pool, timed out unsent and was given up (one attempt).
    settings = {**FAST, "feedback_webhook_concurrency": 2, "feedback_webhook_max_attempts": 1}
    async with receiving(hang=True) as receiver:
        app = await make_app(feedback_webhook_url=receiver.url, **settings)
        async with app_client(app) as client:
            by_cell: dict[int, str] = {}
            while len(by_cell) < 3:
                run_id = await submit(client, spec(["a"]))
                by_cell.setdefault(keys.cell_of(run_id), run_id)
            await report(redis, *(waiting(run_id) for run_id in by_cell.values()))
            await receiver.wait_for(3)
            await all_settled(redis, by_cell)
    assert {json.loads(r.body)["graflow"]["run_id"] for r in receiver.received} == set(by_cell.values())
    # Never more than 2 at once: the third came once a POST had timed out.
    first, _, third = receiver.received
    assert third.at - first.at >= 0.5


async def all_settled(redis, cells) -> None:
    async def none_pending() -> bool:
        for cell in cells:
            pending = await redis.xpending(keys.feedback_opened(cell), keys.FEEDBACK_NOTIFIER_GROUP)
            if pending["pending"]:
                return False
        return True

    await until(none_pending, what="every cell's notification acknowledged")


async def test_a_restarted_replica_reads_all_its_own_pending_entries_past_its_slots(make_app, redis):
    # More own pending entries than slots: the first read took as many as there were slots, the
    # rest waited for XAUTOCLAIM (claim_idle_ms, here a minute) instead of being read on.
    settings = {**FAST, "feedback_webhook_concurrency": 1, "feedback_webhook_claim_idle_ms": 60_000}
    async with receiving() as receiver:
        before = await make_app(feedback_webhook_url=receiver.url, consumer_name="restarted", **settings)
        assert before.notifier is not None
        await before.notifier.stop()  # it records requests and reads none: we read as it did
        async with app_client(before) as client:
            run_ids = [await submit(client, spec(["a"])) for _ in range(3)]
            await report(redis, *(waiting(run_id) for run_id in run_ids))
            await until(lambda: _appended(redis, 3), what="the requests appended")
        taken = await redis.xreadgroup(keys.FEEDBACK_NOTIFIER_GROUP, "restarted", {STREAM: ">"}, count=10)
        assert len(taken[0][1]) == 3
        await make_app(feedback_webhook_url=receiver.url, consumer_name="restarted", **settings)
        await receiver.wait_for(3)
        await settled(redis)
    assert {json.loads(r.body)["graflow"]["run_id"] for r in receiver.received} == set(run_ids)


async def _appended(redis, count: int) -> bool:
    return await redis.xlen(STREAM) >= count
