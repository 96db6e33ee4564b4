"""Integrity on the bus, the scheduler's part: with signing keys it applies only outcomes that verify
(any listed key: rotation), dead-letters the others with ``BadSignature`` leaving the run as it
was, and signs what it appends itself (envelopes, a wait's timeout outcome)."""

from __future__ import annotations

import asyncio
import secrets

from graflow_api.v1 import common_pb2, feedback_pb2, messages_pb2, scheduler_pb2
from graflow_runtime import keys
from graflow_runtime.signing import KEY_ID_FIELD, BusKeys, Kind

from graflow_scheduler.testing.app import app_client, report, run_end, submit
from graflow_scheduler.testing.enqueued import wait_enqueued
from graflow_scheduler.testing.specs import outcome, spec

OLD = f"old:{secrets.token_hex(32)}"
NEW = f"new:{secrets.token_hex(32)}"
OLD_KEYS = BusKeys.from_settings([OLD], "old")
BOTH_KEYS = BusKeys.from_settings([OLD, NEW], "new")
SIGNING = {"signing_keys": [OLD, NEW], "signing_key_id": "new"}


async def node_states(client, run_id: str) -> dict[str, str]:
    info = await client.GetRun(scheduler_pb2.GetRunRequest(run_id=run_id))
    return {n.node_id: common_pb2.NodeState.Name(n.state) for n in info.nodes}


async def dead_letters(redis) -> list[messages_pb2.DeadLetter]:
    entries = await redis.xrange(keys.DEAD_LETTERS_STREAM)
    return [messages_pb2.DeadLetter.FromString(f[b"d"]) for _, f in entries]


async def until(predicate, timeout_s: float = 10.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not (found := await predicate()):
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
    return found


async def test_forged_and_tampered_outcomes_change_nothing_and_old_key_outcomes_apply_mid_rotation(
    make_app, redis
) -> None:
    app = await make_app(**SIGNING)
    async with app_client(app) as client:
        run_id = await submit(client, spec(["a", "b"], ["a>b"]))
        await wait_enqueued(redis, lambda e: e.delivered(run_id) == [("a", 1)])
        [(_, entry)] = await redis.xrange(keys.queue_stream("default"))
        assert entry[KEY_ID_FIELD] == b"new"
        assert BOTH_KEYS.fields_problem(Kind.ENVELOPE, entry[keys.ENVELOPE_FIELD], entry) is None

        await report(redis, outcome(run_id, "a"))  # unsigned
        success = outcome(run_id, "a").SerializeToString()
        signed = BOTH_KEYS.sign_fields(Kind.OUTCOME, success)
        tampered = outcome(run_id, "a", ok=False, retryable=False).SerializeToString()
        await redis.xadd(keys.OUTCOMES_STREAM, {keys.OUTCOME_FIELD: tampered, **signed})

        letters = await until(lambda: _at_least(dead_letters(redis), 2))
        assert [x.reason.removeprefix(f"{keys.OUTCOMES_STREAM}: ") for x in letters] == [
            "BadSignature: the message is not signed (no field 'k' or 's')",
            "BadSignature: the HMAC of key 'new' does not match the message",
        ]
        assert [(x.run_id, x.node_id) for x in letters] == [("", ""), ("", "")]  # nothing decoded
        assert await node_states(client, run_id) == {"a": "NODE_STATE_READY", "b": "NODE_STATE_PENDING"}
        assert app.consumer.batches.stats.applied == 0

        await report(redis, outcome(run_id, "a"), bus_keys=OLD_KEYS)  # a worker not yet switched
        await wait_enqueued(redis, lambda e: ("b", 1) in e.delivered(run_id))
        await report(redis, outcome(run_id, "b"), bus_keys=BOTH_KEYS)
        assert await run_end(client, run_id) == "TYPE_RUN_SUCCEEDED"


async def _at_least(found, count: int):
    items = await found
    return items if len(items) >= count else None


async def test_a_wait_timeout_outcome_is_signed_by_the_scheduler_and_applied(make_app, redis) -> None:
    app = await make_app(wait_timer_interval_s=0.02, **SIGNING)
    async with app_client(app) as client:
        run_id = await submit(client, spec(["a"]))
        request = feedback_pb2.FeedbackRequest(
            request_id="a.0.1", kind=feedback_pb2.FEEDBACK_KIND_APPROVAL, prompt="ship it?", timeout_ms=100
        )
        waiting = messages_pb2.TaskOutcome(
            run_id=run_id, node_id="a", attempt=1, status=messages_pb2.TaskOutcome.STATUS_WAITING,
            worker_id="w1", wait=messages_pb2.Wait(feedback=request),
        )
        await report(redis, waiting, bus_keys=BOTH_KEYS)

        assert await run_end(client, run_id) == "TYPE_RUN_FAILED"
        info = await client.GetRun(scheduler_pb2.GetRunRequest(run_id=run_id))
        assert info.error.type == "FeedbackTimeout"
        last = (await redis.xrevrange(keys.OUTCOMES_STREAM, count=1))[0][1]
        assert last[KEY_ID_FIELD] == b"new"
        assert await dead_letters(redis) == []
