"""Nothing forged runs (issue 14, section 3): with signing keys, messages written straight into Redis
by somebody without the key are never executed nor applied; each goes to the dead letters with the
reason ``BadSignature``, and the system goes on."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

from graflow import workflow
from graflow.devstack import LocalStack
from graflow.operators import Operators
from graflow_api.v1 import messages_pb2
from graflow_runtime import keys
from tests.e2e.conftest import log_records, module_stack, wait_for
from tests.e2e.tasks import gated, source

DEAD_LETTER_FIELD = b"d"


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    with module_stack(request, signing=True) as stack:
        yield stack


def queue_entry_of(fx: redis.Redis, run_id: str, node_id: str) -> dict[bytes, bytes]:
    """The fields of the queue entry that delivered ``node_id`` of ``run_id`` (kept until trimmed)."""
    for _, fields in fx.xrange(keys.queue_stream("default")):
        env = messages_pb2.TaskEnvelope.FromString(fields[keys.ENVELOPE_FIELD])
        if (env.run_id, env.node_id) == (run_id, node_id):
            return fields
    raise AssertionError(f"no queue entry of {run_id}/{node_id}")


def dead_letters_of(stack: LocalStack, original_ids: set[str]) -> list[messages_pb2.DeadLetter]:
    with Operators(stack.coordinator_address) as ops:
        return [x for x in ops.dead_letters(limit=1000) if x.original_id in original_ids]


def test_a_forged_and_a_tampered_envelope_never_run_and_are_dead_lettered_as_bad_signatures(
    stack, client, fx, effects
):
    with workflow("real") as wf:
        source(task_id="s", value=1)
    real = client.submit(wf)
    assert real.result(timeout=60) == 1
    signed = queue_entry_of(fx, real.id, "s")
    assert {b"k", b"s"} <= set(signed)  # the scheduler signed what it enqueued

    tampered = messages_pb2.TaskEnvelope.FromString(signed[keys.ENVELOPE_FIELD])
    tampered.args_json = json.dumps({"value": 666}).encode()
    forged = messages_pb2.TaskEnvelope()
    forged.CopyFrom(tampered)
    forged.node_id = "forged"
    lane = keys.queue_stream("default")
    tampered_id = fx.xadd(lane, {**signed, keys.ENVELOPE_FIELD: tampered.SerializeToString()}).decode()
    forged_id = fx.xadd(lane, {keys.ENVELOPE_FIELD: forged.SerializeToString()}).decode()

    wait_for(lambda: len(dead_letters_of(stack, {tampered_id, forged_id})) == 2, what="two dead letters")
    letters = {x.original_id: x for x in dead_letters_of(stack, {tampered_id, forged_id})}
    assert letters[tampered_id].reason.startswith("BadSignature: the HMAC of key")
    assert letters[forged_id].reason.startswith("BadSignature: the message is not signed")
    assert effects(real.id) == {"s": 1}  # neither the tampered nor the forged one ran
    assert real.status == "SUCCEEDED"
    # Acknowledged (not redelivered), and counted in a warning line of the worker that refused them.
    assert fx.xpending(lane, keys.WORKER_GROUP)["pending"] == 0
    refused = [r for i in range(stack.worker_count) for r in log_records(stack, f"worker-{i}")
               if r.get("event") == "message refused: bad signature"]
    assert len(refused) == 2 and {r["level"] for r in refused} == {"warning"}


def test_a_forged_outcome_changes_nothing_in_its_run_and_is_dead_lettered(stack, client, fx, effects):
    with workflow("gated") as wf:
        gated(task_id="g")
    run = client.submit(wf)
    wait_for(lambda: fx.exists(f"started:{run.id}:g:1"), what="the gated task to start")
    forged = messages_pb2.TaskOutcome(
        run_id=run.id, node_id="g", attempt=1, status=messages_pb2.TaskOutcome.STATUS_SUCCEEDED,
        worker_id="mallory", has_result=False,
    )
    forged_id = fx.xadd(keys.OUTCOMES_STREAM, {keys.OUTCOME_FIELD: forged.SerializeToString()}).decode()

    wait_for(lambda: dead_letters_of(stack, {forged_id}), what="the forged outcome's dead letter")
    (letter,) = dead_letters_of(stack, {forged_id})
    assert letter.reason.startswith(f"{keys.OUTCOMES_STREAM}: BadSignature: the message is not signed")
    assert run.status == "RUNNING"
    assert fx.hget(keys.run_state(run.id), "g") == b"READY"

    fx.set(f"gate:{run.id}:g:1", 1)
    assert run.result(timeout=60) == 1  # the real outcome still applies
    assert effects(run.id) == {"g": 1}


def test_a_replayed_dead_letter_keeps_its_valid_signature_and_runs(stack, client, fx, effects):
    with workflow("replayed") as wf:
        gated(task_id="g")  # keeps the run live
        source(task_id="s")
    run = client.submit(wf)
    wait_for(lambda: effects(run.id).get("s") == 1, what="s to run")
    signed = queue_entry_of(fx, run.id, "s")
    # A dead letter of that delivery as a worker writes one: the message, its signature beside it.
    letter = messages_pb2.DeadLetter(queue="default", original_id="1-0", reason="test", raw=signed[b"e"])
    letter_id = fx.xadd(keys.DEAD_LETTERS_STREAM, {
        DEAD_LETTER_FIELD: letter.SerializeToString(), b"k": signed[b"k"], b"s": signed[b"s"]}).decode()

    with Operators(stack.coordinator_address) as ops:
        assert ops.replay_dead_letters([letter_id]) == 1

    wait_for(lambda: effects(run.id).get("s") == 2, what="the replayed delivery to run")
    fx.set(f"gate:{run.id}:g:1", 1)
    assert run.result(timeout=60) == {"g": 1, "s": 1}
