"""Property: whatever a queue entry holds (random bytes, an envelope truncated or mutated, an
envelope with wrong field values, no envelope field), the worker's decoding gives an envelope it
can run or a reason to dead-letter the entry; never an exception (which would stop its reader).
And an envelope it can run ends in an outcome (a success, or a failure naming the problem with the
task's arguments), never in an error of the worker itself."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from hypothesis import assume, given

from graflow_api.v1 import messages_pb2
from graflow_runtime import keys
from graflow_runtime.testing import hostile
from graflow_runtime.testing.properties import PROPERTY_SETTINGS, RANDOMS

from graflow_worker.consumer import decode_entry
from graflow_worker.registry import load_registry
from graflow_worker.runner import Runner
from graflow_worker.testing.services import TASKS_MODULE

SUCCEEDED = messages_pb2.TaskOutcome.STATUS_SUCCEEDED
FAILED = messages_pb2.TaskOutcome.STATUS_FAILED
# Test tasks that only compute (no sleeps, no side effects), and a name no worker registers.
SAFE_TASKS = ["add", "collect", "collect_with_base", "refine", "describe", "not_registered"]


@PROPERTY_SETTINGS
@given(RANDOMS)
def test_any_queue_entry_decodes_to_a_runnable_envelope_or_a_reason(rng: random.Random) -> None:
    raw = hostile.bus_bytes(rng, hostile.envelope(rng, task_types=["echo"]).SerializeToString())
    fields = {keys.ENVELOPE_FIELD: raw} if rng.random() < 0.95 else {b"x": raw}
    envelope, kept, reason = decode_entry(fields)
    if reason:
        assert reason.startswith("undecodable envelope: ")
        assert kept == fields.get(keys.ENVELOPE_FIELD, b"")
        return
    assert envelope is not None and kept == raw
    assert envelope.run_id and envelope.node_id and envelope.task_type and envelope.attempt >= 1


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    runner = Runner(load_registry([TASKS_MODULE]), worker_id="w-1", concurrency=2)
    yield runner
    runner.close()


@PROPERTY_SETTINGS
@given(RANDOMS)
async def test_any_runnable_envelope_ends_in_an_outcome_that_is_not_an_error_of_the_worker(
    runner: Runner, rng: random.Random
) -> None:
    envelope, _, reason = decode_entry({keys.ENVELOPE_FIELD: hostile.envelope(rng, task_types=SAFE_TASKS)
                                        .SerializeToString()})
    assume(not reason)
    assert envelope is not None
    envelope.timeout_ms = min(envelope.timeout_ms, 5000)

    needs = runner.needs_upstream(envelope)
    execution = await runner.run(envelope, {})

    assert needs in (True, False)
    assert execution.outcome.status in (SUCCEEDED, FAILED), execution.outcome
    assert execution.outcome.error.type != "WorkerError", execution.outcome.error.message
