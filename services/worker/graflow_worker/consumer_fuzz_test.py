"""Property: whatever a queue entry holds (random bytes, an envelope truncated or mutated, an
envelope with wrong field values, no envelope field), the worker's decoding gives an envelope it
can run or a reason to dead-letter the entry; never an exception (which would stop its reader)."""

from __future__ import annotations

import random

from hypothesis import given

from graflow_runtime import keys
from graflow_runtime.testing import hostile
from graflow_runtime.testing.properties import PROPERTY_SETTINGS, RANDOMS

from graflow_worker.consumer import decode_entry


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
