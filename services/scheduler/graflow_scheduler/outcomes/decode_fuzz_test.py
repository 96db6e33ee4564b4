"""Property: whatever bytes sit in an outcome entry (random, a valid outcome truncated or mutated,
a valid one with wrong field values), decoding gives an outcome the scheduler can apply or a dead
letter with its reason; never an exception (which would fail the whole batch)."""

from __future__ import annotations

import random

from hypothesis import given

from graflow_runtime import keys
from graflow_runtime.runids import is_run_id
from graflow_runtime.testing import hostile
from graflow_runtime.testing.properties import PROPERTY_SETTINGS, RANDOMS

from graflow_scheduler.outcomes.apply import decode_outcome
from graflow_scheduler.outcomes.stream import DeadOutcome


@PROPERTY_SETTINGS
@given(RANDOMS)
def test_any_outcome_entry_decodes_to_an_applicable_outcome_or_a_dead_letter_with_a_reason(
    rng: random.Random,
) -> None:
    raw = hostile.bus_bytes(rng, hostile.outcome(rng, task_types=["echo"]).SerializeToString())
    fields = {keys.OUTCOME_FIELD: raw} if rng.random() < 0.95 else {b"x": raw}
    decoded = decode_outcome(b"1-0", fields)
    if isinstance(decoded, DeadOutcome):
        assert decoded.reason.startswith(("undecodable outcome: ", "invalid outcome: "))
        assert decoded.entry_id == b"1-0"
        return
    assert is_run_id(decoded.run_id)
    assert decoded.node_id
    assert decoded.attempt >= 1
