"""Integrity on the bus, the worker's part: with signing keys it runs only envelopes that verify
(with any listed key: rotation), signs its outcomes with its signing key, and dead-letters every
other envelope with ``BadSignature`` without running it, acknowledged and counted."""

from __future__ import annotations

import secrets

from graflow_api.v1 import messages_pb2
from graflow_runtime import keys
from graflow_runtime.signing import KEY_ID_FIELD, BusKeys, Kind

from graflow_worker.testing.services import (
    enqueue,
    envelope,
    eventually,
    outcomes,
    pending_count,
    wait_outcomes,
)

OLD = f"old:{secrets.token_hex(32)}"
NEW = f"new:{secrets.token_hex(32)}"
OLD_KEYS = BusKeys.from_settings([OLD], "old")
BOTH_KEYS = BusKeys.from_settings([OLD, NEW], "new")


async def test_a_worker_runs_what_any_listed_key_signed_signs_its_outcomes_and_dead_letters_the_rest(stack):
    worker = await stack.start_worker(signing_keys=f"{OLD},{NEW}", signing_key_id="new")
    [forged_id] = await enqueue(stack.redis, envelope("r1", "forged", "add", args={"a": 1, "b": 1}))
    await enqueue(stack.redis, envelope("r1", "a", "add", args={"a": 1, "b": 2}), bus_keys=OLD_KEYS)

    [outcome] = await wait_outcomes(stack.redis, 1)
    assert (outcome.node_id, outcome.status) == ("a", messages_pb2.TaskOutcome.STATUS_SUCCEEDED)
    [(_, fields)] = await stack.redis.xrange(keys.OUTCOMES_STREAM)
    assert fields[KEY_ID_FIELD] == b"new"
    assert BOTH_KEYS.fields_problem(Kind.OUTCOME, fields[keys.OUTCOME_FIELD], fields) is None

    [(_, dead)] = await eventually(lambda: stack.redis.xrange(keys.DEAD_LETTERS_STREAM), what="a dead letter")
    letter = messages_pb2.DeadLetter.FromString(dead[b"d"])
    assert letter.original_id == forged_id.decode()
    assert letter.reason == "BadSignature: the message is not signed (no field 'k' or 's')"
    assert [o.node_id for o in await outcomes(stack.redis)] == ["a"]  # the forged one never ran
    assert await pending_count(stack.redis) == 0  # acknowledged: not delivered again
    assert worker.bus_keys.refused.by_kind == {"ENVELOPE": 1}
