"""Chaos: a worker dies or freezes while it holds a task.

Each test runs ``source >> g >> collect`` where ``g`` (tests.chaos.tasks.chaos_hold) marks its start and
then waits on a gate, so the fault hits the worker at a known point of the task. The coordinator
declares the worker dead after its lease (1.5 s) and another worker runs ``g`` again (the history
may record that redelivery as a retry of ``g``: the lost attempt is replaced by a new one).
"""

from __future__ import annotations

from graflow import parallel, workflow
from graflow_api.v1 import messages_pb2
from graflow_runtime import keys
from tests.chaos.conftest import QUEUE, Chaos, chaos_stack, refuse_worker_commits, wait_until
from tests.chaos.tasks import chaos_hold, chaos_in_order
from tests.e2e.tasks import collect, source

EXPECTED = {"count": 1, "total": 2}  # g returns its value (1) + source's result (1)
# g's attempt was lost with its worker once: it may be redelivered as a new attempt (a retry event).
ONE_LOST = {"g": 1}


def gated_chain(name: str, gate: str, *, effect_first: bool) -> object:
    with workflow(name) as wf:
        held = chaos_hold(task_id="g", gate=gate, effect_first=effect_first)
        source(task_id="source", value=1) >> held >> collect
    return wf


def victim_of(chaos: Chaos, run_id: str) -> str:
    """The worker running ``g`` (its first start mark)."""
    ((worker, _attempt),) = chaos.wait_marks("started", run_id, "g")
    return worker


def pending_for(chaos: Chaos, worker_id: str) -> int:
    return len(chaos.bus.xpending_range(QUEUE, "workers", "-", "+", 100, consumername=worker_id))


def test_worker_killed_before_the_side_effect_the_task_runs_once_on_another_worker():
    """Guarantee asserted: side effects exactly once. The worker is SIGKILLed before ``g``'s body
    records its effect, so every body's effect happens exactly once in all (``g``'s on the other
    worker); the run succeeds and its history saw each node succeed once."""
    with chaos_stack() as chaos:
        wf = gated_chain("kill-before-effect", "before", effect_first=False)
        run = chaos.client.submit(wf)
        victim = victim_of(chaos, run.id)
        chaos.stack.kill_worker(chaos.worker_index(victim))
        chaos.open_gate("before")
        chaos.wait_runs([run.id])

        starts = chaos.marks("started", run.id, "g")
        assert len(starts) == 2 and starts[1][0] != victim, starts
        assert run.result(timeout=10) == EXPECTED
        chaos.assert_effects_once(run.id, wf.spec())
        chaos.assert_run_state_once(run.id, wf.spec(), redelivered=ONE_LOST)


def test_worker_killed_after_the_side_effect_the_run_state_sees_the_task_once():
    """Guarantee asserted: effects on run state exactly once. The worker is SIGKILLed after ``g``'s
    body recorded its effect, before it finished: at-least-once delivery runs the body again on the
    other worker, so ``g``'s raw side effect happened exactly twice (once per execution), while the
    history saw ``g`` succeed once, its stored result is the applied attempt's, and ``source`` and
    ``collect`` (the successor) ran exactly once."""
    with chaos_stack() as chaos:
        wf = gated_chain("kill-after-effect", "after", effect_first=True)
        run = chaos.client.submit(wf)
        victim = victim_of(chaos, run.id)
        wait_until(lambda: chaos.effects(run.id).get("g") == 1, 10, "g's first side effect")
        chaos.stack.kill_worker(chaos.worker_index(victim))
        chaos.open_gate("after")
        chaos.wait_runs([run.id])

        assert run.result(timeout=10) == EXPECTED
        assert chaos.effects(run.id) == {"source": 1, "g": 2, "collect": 1}
        chaos.assert_run_state_once(run.id, wf.spec(), redelivered=ONE_LOST)


def test_worker_killed_after_storing_the_result_before_the_ack_the_run_state_sees_the_task_once():
    """Guarantee asserted: effects on run state exactly once. The workers' Redis user loses XADD/XACK
    while ``g`` runs, so its worker stores ``g``'s result in the result-store and then cannot append
    the outcome nor acknowledge the delivery (it keeps retrying, holding the batch); it is SIGKILLed
    in that state. Another worker runs ``g`` again (its raw side effect happened exactly twice); the
    history saw ``g`` succeed once, the stored result is the one of the attempt the history
    applied, and ``collect`` ran exactly once. Every result goes through PutResults here
    (INLINE_RESULT_MAX_BYTES=0: the path of results above the limit)."""
    with chaos_stack(worker_acl=True, env={"GRAFLOW_WORKER_INLINE_RESULT_MAX_BYTES": "0"}) as chaos:
        wf = gated_chain("kill-before-ack", "stored", effect_first=False)
        run = chaos.client.submit(wf)
        victim = victim_of(chaos, run.id)
        refuse_worker_commits(chaos, True)
        chaos.open_gate("stored")
        wait_until(lambda: "g" in chaos.stored_results(run.id, ["g"]), 15, "g's result to be stored")
        assert pending_for(chaos, victim) == 1  # stored, not acknowledged (its commit keeps failing)
        chaos.stack.kill_worker(chaos.worker_index(victim))
        refuse_worker_commits(chaos, False)
        chaos.wait_runs([run.id])

        assert run.result(timeout=10) == EXPECTED
        assert chaos.effects(run.id) == {"source": 1, "g": 2, "collect": 1}
        chaos.assert_run_state_once(run.id, wf.spec(), redelivered=ONE_LOST)


def test_worker_killed_holding_an_inline_result_it_could_not_commit_the_run_state_sees_the_task_once():
    """Guarantee asserted: effects on run state exactly once. As above with the default limit:
    ``g``'s small result rides in its outcome, so the worker that cannot append the outcome holds
    the result too, and nothing is stored; it is SIGKILLed in that state. Another worker runs ``g``
    again; the history saw ``g`` succeed once, the stored result is the applied attempt's (written
    by the scheduler with that outcome), and ``collect`` ran exactly once."""
    with chaos_stack(worker_acl=True) as chaos:
        wf = gated_chain("kill-holding-inline", "held", effect_first=False)
        run = chaos.client.submit(wf)
        victim = victim_of(chaos, run.id)
        index = chaos.worker_index(victim)
        refuse_worker_commits(chaos, True)
        chaos.open_gate("held")
        log = chaos.stack.log_dir / f"worker-{index}.log"
        wait_until(lambda: "cannot append outcomes" in log.read_text(), 15, "g's commit to be refused")
        assert pending_for(chaos, victim) == 1  # finished, not acknowledged (its commit keeps failing)
        assert chaos.stored_results(run.id, ["g"]) == {}  # the result is held with the outcome
        chaos.stack.kill_worker(index)
        refuse_worker_commits(chaos, False)
        chaos.wait_runs([run.id])

        assert run.result(timeout=10) == EXPECTED
        assert chaos.effects(run.id) == {"source": 1, "g": 2, "collect": 1}
        chaos.assert_run_state_once(run.id, wf.spec(), redelivered=ONE_LOST)


def test_worker_paused_past_its_lease_finds_its_work_taken_and_its_late_outcome_rejected():
    """Guarantee asserted: effects on run state exactly once, fenced. The worker running ``g`` is
    SIGSTOPped until the coordinator declared it dead and ``g`` started again on the other worker;
    then it is SIGCONTed and let finish first, so its late outcome reaches the scheduler before the
    new attempt's. The history must apply the new attempt's success, not the late one (it was
    rejected), once; ``collect`` ran exactly once; the stored result is the applied attempt's."""
    with chaos_stack() as chaos:
        wf = gated_chain("paused", "paused", effect_first=False)
        run = chaos.client.submit(wf)
        victim = victim_of(chaos, run.id)
        name = f"worker-{chaos.worker_index(victim)}"
        chaos.stack.pause(name)
        try:
            starts = chaos.wait_marks("started", run.id, "g", count=2, timeout_s=30)
        finally:
            chaos.stack.resume(name)
        assert starts[1][0] != victim, starts

        # The paused worker wakes up and finishes first; its outcome (if it still sends one) is
        # applied or rejected before the new attempt can finish.
        chaos.open_gate("paused", worker_id=victim)
        chaos.wait_marks("done", run.id, "g", timeout_s=15)
        late = wait_for_outcome(chaos, run.id, "g", victim, timeout_s=10)
        if late is not None:
            wait_until(lambda: scheduler_consumed(chaos, late), 15, "the scheduler to read the late outcome")
        chaos.open_gate("paused")
        chaos.wait_runs([run.id])
        chaos.wait_marks("done", run.id, "g", count=2, timeout_s=15)

        assert run.result(timeout=10) == EXPECTED
        assert chaos.effects(run.id) == {"source": 1, "g": 2, "collect": 1}
        events = chaos.assert_run_state_once(run.id, wf.spec(), redelivered=ONE_LOST)
        (applied,) = (e for e in events if e.node_id == "g" and e.type == e.TYPE_NODE_SUCCEEDED)
        assert applied.worker_id != victim, (
            f"the late outcome of the paused worker {victim} (attempt {applied.attempt}) was applied"
        )


def test_a_delivery_whose_read_reply_was_lost_is_still_run_by_its_live_worker():
    """Redis can serve a worker's XREADGROUP (the entry enters the worker's pending list, and with
    AOF that is persisted) and the reply never reach the worker: the connection drops, or Redis
    restarts right after. The worker stays alive and heartbeating, so no reclaim will ever move
    the entry. Simulated exactly: while the only worker is busy (both slots held by ``h1``/``h2``,
    so it issues no read), the test reads the next run's ``source`` delivery *as that worker*.
    Asserted: both runs succeed, every body ran exactly once, run state exactly once."""
    with chaos_stack(1, env={"GRAFLOW_WORKER_CONCURRENCY": "2"}) as chaos:
        with workflow("busy") as busy_wf:
            parallel(chaos_hold(task_id="h1", gate="busy"), chaos_hold(task_id="h2", gate="busy")) >> collect
        with workflow("lost-reply") as lost_wf:
            source(task_id="source", value=1) >> collect
        busy = chaos.client.submit(busy_wf)
        chaos.wait_marks("started", busy.id, "h1")
        chaos.wait_marks("started", busy.id, "h2")
        lost = chaos.client.submit(lost_wf)
        wait_until(lambda: chaos.bus.xinfo_groups(QUEUE)[0]["lag"] == 1, 15, "source's delivery in the queue")
        reply = chaos.bus.xreadgroup("workers", "dev-worker-0", {QUEUE: ">"}, count=1)
        envelope = messages_pb2.TaskEnvelope.FromString(reply[0][1][0][1][keys.ENVELOPE_FIELD])
        assert (envelope.run_id, envelope.node_id) == (lost.id, "source")  # pending for dev-worker-0
        chaos.open_gate("busy")
        chaos.wait_runs([busy.id, lost.id])

        for run, wf in ((busy, busy_wf), (lost, lost_wf)):
            chaos.assert_effects_once(run.id, wf.spec())
            chaos.assert_run_state_once(run.id, wf.spec())


def wait_for_outcome(
    chaos: Chaos, run_id: str, node_id: str, worker_id: str, timeout_s: float
) -> bytes | None:
    """Id of the outcome of ``node_id`` that ``worker_id`` appended, or None if none came in time."""
    found: list[bytes] = []

    def appended() -> bool:
        for entry_id, fields in chaos.bus.xrange(keys.OUTCOMES_STREAM, "-", "+"):
            outcome = messages_pb2.TaskOutcome.FromString(fields[keys.OUTCOME_FIELD])
            if (outcome.run_id, outcome.node_id, outcome.worker_id) == (run_id, node_id, worker_id):
                found.append(entry_id)
                return True
        return False

    try:
        wait_until(appended, timeout_s, "the late outcome", interval_s=0.1)
    except AssertionError:
        return None
    return found[0]


def scheduler_consumed(chaos: Chaos, entry_id: bytes) -> bool:
    """The scheduler group has read ``entry_id`` and acknowledged everything it read."""
    (group,) = (g for g in chaos.bus.xinfo_groups(keys.OUTCOMES_STREAM) if g["name"] == b"scheduler")
    last = tuple(int(p) for p in group["last-delivered-id"].split(b"-"))
    return last >= tuple(int(p) for p in entry_id.split(b"-")) and group["pending"] == 0


BACKLOG = 12


def test_an_attempt_lost_with_its_worker_runs_again_before_the_queues_backlog():
    """Guarantee asserted: a lost attempt is redelivered ahead of the queue's backlog (issue 13,
    priority lanes). Two workers of 2 slots run a group whose members all wait on gates: ``victim``
    (dispatched first) and ``BACKLOG`` more, so every slot is taken and the rest of the backlog
    waits in the queue's normal lane. The victim's worker is SIGKILLed; once the victim's next
    attempt is queued, the gates open. The surviving worker's next reads take the high lane first:
    the victim's new attempt starts before every backlog member that had not started before the kill
    (by the order the bodies recorded their starts, not by timing)."""
    with chaos_stack(env={"GRAFLOW_WORKER_CONCURRENCY": "2"}) as chaos:
        with workflow("lost-ahead-of-backlog") as wf:
            parallel(
                chaos_in_order(task_id="victim", gate="victim"),
                *[chaos_in_order(task_id=f"b{i}", gate="backlog") for i in range(BACKLOG)],
            )
        run = chaos.client.submit(wf)
        ((victim, _attempt),) = chaos.wait_marks("started", run.id, "victim")
        wait_until(lambda: len(chaos.fx.lrange(f"order:{run.id}", 0, -1)) == 4, 15, "every slot taken")
        started_before_kill = {raw.decode().split()[0] for raw in chaos.fx.lrange(f"order:{run.id}", 0, -1)}
        chaos.stack.kill_worker(chaos.worker_index(victim))
        high_lane = keys.queue_high_stream("default")

        def victim_requeued() -> bool:
            envelopes = [messages_pb2.TaskEnvelope.FromString(f[keys.ENVELOPE_FIELD])
                         for _id, f in chaos.bus.xrange(high_lane)]
            return any((e.node_id, e.attempt) == ("victim", 2) for e in envelopes)

        wait_until(victim_requeued, 15, "the victim's next attempt in the high lane")
        chaos.open_gate("victim")
        chaos.open_gate("backlog")
        chaos.wait_runs([run.id])

        order = [tuple(raw.decode().split()) for raw in chaos.fx.lrange(f"order:{run.id}", 0, -1)]
        rerun = order.index(("victim", "2"))
        queued = {f"b{i}" for i in range(BACKLOG)} - started_before_kill
        first_starts = {node: order.index((node, "1")) for node in queued}
        assert len(queued) >= BACKLOG - 3, started_before_kill
        assert all(rerun < index for index in first_starts.values()), (order, rerun)
        chaos.assert_run_state_once(run.id, wf.spec(), redelivered=dict.fromkeys(started_before_kill, 1))
