"""Chaos on the bus: a duplicated delivery, poison messages, a retry that waits past the lease.

These faults leave every process running, so the tests share one stack (``calm``).
"""

from __future__ import annotations

from graflow import parallel, workflow
from graflow.run import event_type_name
from graflow_api.v1 import messages_pb2
from graflow_runtime import keys
from tests.chaos.conftest import LEASE_S, QUEUE, Chaos, wait_until
from tests.chaos.tasks import LATE_RETRY_INTERVAL_S, chaos_hold, chaos_late_retry
from tests.e2e.tasks import collect, item, source


def envelope_of(chaos: Chaos, run_id: str, node_id: str) -> bytes:
    """The bytes of the delivery of ``node_id`` in the queue stream."""
    for _entry_id, fields in chaos.bus.xrange(QUEUE, "-", "+"):
        raw = fields.get(keys.ENVELOPE_FIELD, b"")
        try:
            envelope = messages_pb2.TaskEnvelope.FromString(raw)
        except Exception:  # noqa: BLE001 - other tests' poison entries
            continue
        if (envelope.run_id, envelope.node_id) == (run_id, node_id):
            return raw
    raise AssertionError(f"no delivery of {node_id} of run {run_id} in {QUEUE}")


def queue_pending(chaos: Chaos) -> int:
    return int(chaos.bus.xpending(QUEUE, "workers")["pending"])


def test_a_duplicated_delivery_changes_nothing_in_the_run_state(calm: Chaos):
    """A copy of ``g``'s envelope is XADDed to the queue by hand while ``g`` runs, and a copy of
    ``source``'s after the run ended. At-least-once: the copy of ``g`` runs its body again (``g``'s
    raw effect happened exactly twice). The run had ended when ``source``'s copy came, so that one
    is skipped, not run (invariant 11): ``source``'s effect stays at one, the copy is acknowledged
    and counted as a skipped delivery. Asserted on run state: the history saw each node succeed
    once and is left unchanged by the late copy, the successor ``collect`` ran exactly once, the
    stored results are of the applied attempts, the result is unchanged."""
    with workflow("duplicate") as wf:
        source(task_id="source", value=1) >> chaos_hold(task_id="g", gate="dup") >> collect
    run = calm.client.submit(wf)
    calm.wait_marks("started", run.id, "g")
    first = envelope_of(calm, run.id, "source")
    calm.bus.xadd(QUEUE, {keys.ENVELOPE_FIELD: envelope_of(calm, run.id, "g")})
    calm.wait_marks("started", run.id, "g", count=2)
    calm.open_gate("dup")
    calm.wait_runs([run.id])
    calm.wait_marks("done", run.id, "g", count=2)
    assert run.result(timeout=10) == {"count": 1, "total": 2}
    # Both executions of g are attempt 1; either one's result may be the one stored.
    history = calm.assert_run_state_once(run.id, wf.spec(), same_execution=False)

    calm.bus.xadd(QUEUE, {keys.ENVELOPE_FIELD: first})
    wait_until(lambda: calm.client.get_run(run.id).skipped_deliveries == 1, 15,
               "the copy of source to be skipped and reported")
    wait_until(lambda: queue_pending(calm) == 0, 15, "the copy to be acknowledged")
    assert calm.effects(run.id) == {"source": 1, "g": 2, "collect": 1}
    assert [(e.cursor, e.type) for e in calm.history(run.id)] == [(e.cursor, e.type) for e in history]
    assert run.result(timeout=10) == {"count": 1, "total": 2}


def test_poison_messages_are_dead_lettered_with_a_reason_and_other_work_keeps_flowing(calm: Chaos):
    """Undecodable bytes, and an entry without an envelope, are XADDed to the queue between real
    work. Asserted: both are dead-lettered (listed by the coordinator's ListDeadLetters with their
    entry id, queue and an 'undecodable envelope' reason) and acknowledged (nothing stays pending);
    runs submitted around them succeed with every task body run exactly once."""
    with workflow("around-poison") as wf:
        items = [item(task_id=f"i{i}", i=i) for i in range(30)]
        source(task_id="source", value=0) >> parallel(*items) >> collect
    before = calm.client.submit(wf)
    garbage = calm.bus.xadd(QUEUE, {keys.ENVELOPE_FIELD: b"\x0a\xff\xff\xff\xff\xff\xff"}).decode()
    empty = calm.bus.xadd(QUEUE, {b"x": b"not an envelope"}).decode()
    after = calm.client.submit(wf)
    calm.wait_runs([before.id, after.id])

    for run in (before, after):
        assert run.result(timeout=10) == {"count": 30, "total": sum(range(30))}
        calm.assert_effects_once(run.id, wf.spec())
        calm.assert_run_state_once(run.id, wf.spec())
    letters: dict[str, messages_pb2.DeadLetter] = {}

    def listed() -> bool:
        letters.update({letter.original_id: letter for letter in calm.dead_letters()})
        return {garbage, empty} <= set(letters)

    wait_until(listed, 15, "both poison entries in the dead letters")
    for entry_id in (garbage, empty):
        assert letters[entry_id].queue == "default"
        assert letters[entry_id].reason.startswith("undecodable envelope"), letters[entry_id].reason
    assert letters[garbage].raw == b"\x0a\xff\xff\xff\xff\xff\xff"
    wait_until(lambda: queue_pending(calm) == 0, 15, "nothing pending in the queue")


def test_a_retry_whose_backoff_exceeds_the_lease_runs_each_attempt_once(calm: Chaos):
    """``r`` fails its first attempt; its retry waits 3 s, longer than the lease (1.5 s) after which
    the coordinator reclaims deliveries. Asserted: during the backoff the retry waits in the retry
    timer and nothing is pending in the queue (a retry is a new delivery, not a message left
    pending); attempts 1 and 2 each ran exactly once (so ``r``'s body twice by design), the history
    saw one retry and one success, the successor ran once."""
    assert LATE_RETRY_INTERVAL_S > LEASE_S
    with workflow("late-retry") as wf:
        source(task_id="source", value=1) >> chaos_late_retry(task_id="r", fail_times=1) >> collect
    run = calm.client.submit(wf)
    calm.wait_marks("attempts", run.id, "r")
    wait_until(lambda: calm.bus.zcard(keys.RETRY_TIMER) == 1, 10, "the retry to wait in the retry timer")
    assert queue_pending(calm) == 0
    calm.wait_runs([run.id])

    assert run.result(timeout=10) == {"count": 1, "total": 2}
    assert [attempt for _worker, attempt in calm.marks("attempts", run.id, "r")] == [1, 2]
    assert calm.effects(run.id) == {"source": 1, "r": 2, "collect": 1}
    history = calm.assert_run_state_once(run.id, wf.spec(), retries={"r": 1})
    assert [(event_type_name(e.type), e.attempt) for e in history if e.node_id == "r"] == [
        ("NODE_READY", 1), ("NODE_RETRYING", 2), ("NODE_SUCCEEDED", 2)
    ]
