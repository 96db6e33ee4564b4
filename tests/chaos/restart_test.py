"""Chaos: the whole deployment stops and starts again; every run in progress continues from where it was.

Acceptance point: "With all services and workers stopped and started again, every run in progress
continues from where it was." Eight runs are caught at different stages:

- ``chain``: ``source >> g >> collect``, ``source`` done, ``g`` running (held on a gate);
- ``group``: ``source >> (s0..s3, h0, h1) >> collect``, the four ``s`` members done, ``h0`` and
  ``h1`` running (held);
- ``checkpointed``: ``source >> work >> collect``, ``work`` (tests.chaos.tasks.chaos_checkpointed)
  has done and checkpointed 3 of its 6 steps and is held;
- ``queued``: submitted once the workers were gone: its root is in the queue stream, unread;
- ``undispatched``: submitted once the coordinator was gone too, while Redis refused the
  scheduler's dispatch script (``gf:ended``, which it reads, was briefly not a stream): the run
  exists, its root is READY and was never dispatched (the scheduler enqueues without the
  coordinator since issue 13, so the coordinator's absence alone no longer leaves it undispatched);
- ``feedback``: ``source >> approve``, ``approve`` (tests.e2e.tasks.ask) asked for a human approval:
  the node is parked WAITING, the run PAUSED, the request pending;
- ``parent``: ``source >> spawn >> collect``, ``spawn`` (tests.chaos.tasks.chaos_spawn_held) started
  a child run and is parked WAITING for it, the run PAUSED;
- ``child``: that child run, ``a >> held``, ``a`` done, ``held`` running (held).

Then every process stops: both workers, the coordinator, the scheduler and the result-store
(all SIGTERM, or all SIGKILL), and the stack's Redis is restarted the same way (AOF, ``appendfsync
always``). Everything is started again on the same addresses and the same Redis data: the
services, then the workers, with the same worker ids or with new ones (as a deployment that names
its workers ``<host>-<pid>`` would get). The held attempts come back through a different path in
each variant: reported lost when the SIGTERMed workers deregister; reclaimed when a SIGKILLed
worker id registers again; reclaimed from the dead workers once the restarted coordinator's
start-up grace is over when the ids are new. Before the workers are back, the waits are as they
were: both runs PAUSED with their node WAITING, the same request listed by ``list_feedback``.
The gates open and the request is answered (approved).

Asserted, for every run: it SUCCEEDED with the expected result; side effects exactly once (every
task body's effect happened once: the tasks that finished before the stop did not run again, the
held ones ran to the end once); effects on run state exactly once (each node succeeded once in the
history, the stored results are the applied attempts'; only the held nodes may show the
redelivery of their lost attempt as a retry). The held tasks started again after the restart (two
start marks, a new attempt) and ``work`` resumed from its checkpoint: its second execution found 3
steps done and every step ran exactly once. The waits resumed once each: ``approve`` ran twice (it
asked, then it resumed) and returned the answer given after the restart, nothing is left pending;
the child finished, ``spawn`` resumed and the parent's result is built from the child's; each
waiting node parked once and succeeded once, the parent has one child.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import pytest

from graflow import parallel, workflow
from graflow.devstack import SERVERS, ServiceProcess
from graflow.errors import ServiceUnavailableError
from graflow.run import ENDED_STATUSES, event_type_name, node_state_name, status_name
from graflow_api.v1 import feedback_pb2
from graflow_runtime import keys
from tests.chaos.conftest import Chaos, chaos_stack, wait_until
from tests.chaos.tasks import chaos_checkpointed, chaos_hold, chaos_spawn_held, chaos_step, held_child
from tests.e2e.tasks import ask, collect, item, source

GATE = "restart"
STEPS, HOLD_AFTER = 6, 3
DONE_MEMBERS = [f"s{i}" for i in range(4)]
QUEUED_ITEMS = 5
CHILD_VALUE = 3


def chain() -> object:
    with workflow("restart-chain") as wf:
        source(task_id="source", value=1) >> chaos_hold(task_id="g", gate=GATE, value=1) >> collect
    return wf


def group() -> object:
    with workflow("restart-group") as wf:
        members = [chaos_step(task_id=node, i=i) for i, node in enumerate(DONE_MEMBERS)]
        held = [chaos_hold(task_id="h0", gate=GATE, value=10), chaos_hold(task_id="h1", gate=GATE, value=20)]
        source(task_id="source", value=1) >> parallel(*members, *held) >> collect
    return wf


def checkpointed() -> object:
    with workflow("restart-checkpointed") as wf:
        work = chaos_checkpointed(task_id="work", gate=GATE, steps=STEPS, hold_after=HOLD_AFTER)
        source(task_id="source", value=1) >> work >> collect
    return wf


def feedback() -> object:
    with workflow("restart-feedback") as wf:
        source(task_id="source", value=1) >> ask(task_id="approve", prompt="go on after the restart?")
    return wf


def parent() -> object:
    with workflow("restart-parent") as wf:
        spawn = chaos_spawn_held(task_id="spawn", gate=GATE, value=CHILD_VALUE)
        source(task_id="source", value=1) >> spawn >> collect
    return wf


def fan_out(name: str) -> object:
    with workflow(name) as wf:
        (
            source(task_id="source", value=1)
            >> parallel(*[item(task_id=f"i{i}", i=i) for i in range(QUEUED_ITEMS)])
            >> collect
        )
    return wf


# Per run: the nodes held (running) at the stop, the nodes finished before it, the nodes parked
# WAITING at it (their run PAUSED), the run's result.
HELD = {
    "chain": ["g"],
    "group": ["h0", "h1"],
    "checkpointed": ["work"],
    "queued": [],
    "undispatched": [],
    "feedback": [],
    "parent": [],
    "child": ["held"],
}
DONE_BEFORE = {
    "chain": ["source"],
    "group": ["source", *DONE_MEMBERS],
    "checkpointed": ["source"],
    "feedback": ["source"],
    "parent": ["source"],
    "child": ["a"],
}
WAITING = {"feedback": "approve", "parent": "spawn"}
ANSWER = {"approved": True, "by": "restart-test"}  # what feedback's result keeps of the answer
EXPECTED = {
    "chain": {"count": 1, "total": 2},  # g: its value 1 + source's 1
    "group": {"count": 6, "total": sum(range(4)) + 11 + 21},  # h0, h1: value + source's 1
    "checkpointed": {"count": 1, "total": HOLD_AFTER},  # work returns the steps it found done
    "queued": {"count": QUEUED_ITEMS, "total": sum(range(QUEUED_ITEMS))},
    "undispatched": {"count": QUEUED_ITEMS, "total": sum(range(QUEUED_ITEMS))},
    "feedback": ANSWER,  # approve's: the answer given after the restart
    "child": CHILD_VALUE + 1,  # held: its value 1 + a's
    "parent": {"count": 1, "total": (CHILD_VALUE + 1) * 10 + 1},  # spawn: the child's result * 10 + 1
}


def stop_all(processes: list[ServiceProcess], sig: signal.Signals, grace_s: float) -> None:
    """Signal the processes together, then wait for each (killed after ``grace_s``)."""
    for process in processes:
        process.begin_stop(sig)
    for process in processes:
        process.finish_stop(grace_s)
    assert not [p.name for p in processes if p.running]


def node_state(chaos: Chaos, run_id: str, node_id: str) -> bytes | None:
    return chaos.bus.hget(keys.run_state(run_id), node_id)


def run_status(chaos: Chaos, run_id: str) -> bytes | None:
    return chaos.bus.hget(keys.run_meta(run_id), "status")


def dispatched(chaos: Chaos, run_id: str, node_id: str) -> bool:
    return chaos.bus.hget(keys.dispatch_record(run_id), node_id) is not None


@contextlib.contextmanager
def dispatch_refused(chaos: Chaos) -> Iterator[None]:
    """Redis refuses every dispatch script meanwhile (WRONGTYPE: it reads ``gf:ended``, replaced by
    a string and put back afterwards, entries included)."""
    saved = f"chaos:{keys.RUNS_ENDED}"
    had_ends = chaos.bus.exists(keys.RUNS_ENDED)
    if had_ends:
        chaos.bus.rename(keys.RUNS_ENDED, saved)
    chaos.bus.set(keys.RUNS_ENDED, "not a stream")
    try:
        yield
    finally:
        chaos.bus.delete(keys.RUNS_ENDED)
        if had_ends:
            chaos.bus.rename(saved, keys.RUNS_ENDED)


@pytest.mark.parametrize(
    ("sig", "new_worker_ids"),
    [(signal.SIGTERM, False), (signal.SIGKILL, False), (signal.SIGKILL, True)],
    ids=["sigterm-same-workers", "sigkill-same-workers", "sigkill-new-workers"],
)
def test_every_run_in_progress_continues_after_all_services_and_workers_restart(sig, new_worker_ids):
    """See the module docstring: the full stop with ``sig`` (Redis restarted the same way), then a
    start with the same or new worker ids. Side effects and run state exactly once for every run;
    the held tasks ran again as new attempts, the checkpointed one from its checkpoint."""
    with chaos_stack(fsync="always") as chaos:
        stack = chaos.stack
        grace_s = stack.shutdown_grace_s + 5
        wfs = {
            "chain": chain(),
            "group": group(),
            "checkpointed": checkpointed(),
            "queued": fan_out("restart-queued"),
            "undispatched": fan_out("restart-undispatched"),
            "feedback": feedback(),
            "parent": parent(),
            "child": held_child(GATE, CHILD_VALUE),
        }
        runs = {
            name: chaos.client.submit(wfs[name])
            for name in ("chain", "group", "checkpointed", "feedback", "parent")
        }
        parent_id = runs["parent"].id
        wait_until(lambda: chaos.client.get_run(parent_id).child_run_ids, 30, "the parent's child run")
        (child_id,) = chaos.client.get_run(parent_id).child_run_ids
        runs["child"] = chaos.client.run(child_id)
        child_parent = chaos.client.get_run(child_id).parent
        assert (child_parent.run_id, child_parent.node_id) == (parent_id, "spawn")

        # ---- the runs reach their stages: finished tasks applied, held tasks running, waits parked ----
        for name, run in runs.items():
            for node in HELD[name]:
                chaos.wait_marks("started", run.id, node)
        chaos.wait_marks("holding", runs["checkpointed"].id, "work")
        for name, nodes in DONE_BEFORE.items():
            run_id = runs[name].id
            wait_until(
                lambda run_id=run_id, nodes=nodes: all(
                    node_state(chaos, run_id, n) == b"SUCCEEDED" for n in nodes
                ),
                30,
                f"the scheduler to apply {nodes} of run {name}",
            )
        for name, nodes in DONE_BEFORE.items():
            assert chaos.effects(runs[name].id) == dict.fromkeys(nodes, 1), name
        work_id = runs["checkpointed"].id
        assert chaos.fx.lrange(f"resumed:{work_id}:work", 0, -1) == [b"0"]
        for name, node in WAITING.items():
            run_id = runs[name].id
            wait_until(
                lambda run_id=run_id, node=node: node_state(chaos, run_id, node) == b"WAITING"
                and run_status(chaos, run_id) == b"PAUSED",
                30,
                f"{name}/{node} WAITING, its run PAUSED",
            )
        feedback_id = runs["feedback"].id
        (request,) = chaos.client.list_feedback(feedback_id)
        assert (request.request_id, request.node_id) == ("approve.0.1", "approve")
        assert chaos.fx.get(f"asked:{feedback_id}:approve") == b"1"

        # ---- stop everything: the workers, then (a run submitted in between) the services ----
        stop_all(stack.workers, sig, grace_s)
        runs["queued"] = chaos.client.submit(wfs["queued"])
        wait_until(lambda: dispatched(chaos, runs["queued"].id, "source"), 10, "the queued run's dispatch")
        stop_all([stack.servers["coordinator"]], sig, grace_s)
        with dispatch_refused(chaos):
            runs["undispatched"] = chaos.client.submit(wfs["undispatched"])
        assert node_state(chaos, runs["undispatched"].id, "source") == b"READY"
        assert not dispatched(chaos, runs["undispatched"].id, "source")
        stop_all([stack.servers["scheduler"], stack.servers["result-store"]], sig, grace_s)
        for name, run in runs.items():
            assert chaos.effects(run.id) == dict.fromkeys(DONE_BEFORE.get(name, []), 1), name
        stack.restart("redis", sig=sig)
        for name, run in runs.items():  # what Redis kept: every run is still in progress
            status = run_status(chaos, run.id)
            expected = b"PAUSED" if name in WAITING else b"RUNNING"
            assert status == expected, f"run {name} after the Redis restart: {status!r}"

        # ---- start everything again: services, then workers ----
        for name in SERVERS:
            stack.restart(name)
        # The client's channel to the scheduler failed while it was down and may still be in gRPC's
        # reconnect backoff: this test is about the runs' state, so it waits for the channel first.
        wait_until(lambda: reachable(chaos), 15, "the client to reach the restarted scheduler")
        for name, run in runs.items():  # no worker yet: nothing can have moved
            info = chaos.client.get_run(run.id)
            assert info.status not in ENDED_STATUSES, (name, status_name(info.status), info.error)
            if name in WAITING:  # still parked: PAUSED, its node WAITING
                states = {n.node_id: node_state_name(n.state) for n in info.nodes}
                parked = (status_name(info.status), states[WAITING[name]])
                assert parked == ("PAUSED", "WAITING"), (name, parked)
        assert chaos.client.list_feedback(feedback_id) == [request]  # the request is still listed
        if new_worker_ids:
            for _ in range(len(stack.workers)):
                stack.start_worker()
        else:
            for index in range(len(stack.workers)):
                stack.restart(f"worker-{index}")
        assert chaos.fx.get(f"asked:{feedback_id}:approve") == b"1"  # no worker ran it again unanswered
        chaos.open_gate(GATE)
        answered = chaos.client.respond_feedback(
            feedback_id, request.request_id, approved=True, responded_by=ANSWER["by"]
        )
        assert answered.state == feedback_pb2.FEEDBACK_STATE_ANSWERED
        chaos.wait_runs([run.id for run in runs.values()], timeout_s=45)

        # ---- every run continued from where it was, exactly once ----
        for name, run in runs.items():
            spec = wfs[name].spec()
            result = run.result(timeout=10)
            if name == "feedback":  # the answer, and the worker that resumed the task
                result = {key: result[key] for key in ANSWER}
            assert result == EXPECTED[name], name
            chaos.assert_effects_once(run.id, spec)
            chaos.assert_run_state_once(run.id, spec, redelivered=dict.fromkeys(HELD[name], 1))
            for node in HELD[name]:
                starts = chaos.marks("started", run.id, node)  # (worker, attempt) per execution
                assert len(starts) == 2 and starts[1][1] > starts[0][1], (
                    f"{name}/{node} should have started once before the stop and once, as a new "
                    f"attempt, after it: {starts}"
                )
        assert chaos.fx.lrange(f"resumed:{work_id}:work", 0, -1) == [b"0", str(HOLD_AFTER).encode()]
        steps = {n: int(chaos.fx.get(f"steps:{work_id}:work:{n}") or 0) for n in range(1, STEPS + 1)}
        assert steps == dict.fromkeys(range(1, STEPS + 1), 1), f"work's steps ran {steps} times"
        # The question was asked once before the stop and answered after it: approve ran twice (it
        # parked, then it resumed with the answer), its effect once; nothing is pending.
        assert chaos.fx.get(f"asked:{feedback_id}:approve") == b"2"
        assert chaos.client.list_feedback(feedback_id) == []
        # The parent waited for the same child throughout: it has one child, the run above.
        assert chaos.client.get_run(parent_id).child_run_ids == [child_id]
        for name, node in WAITING.items():
            kinds = [event_type_name(e.type) for e in chaos.history(runs[name].id) if e.node_id == node]
            assert kinds.count("NODE_WAITING") == 1 and kinds.count("NODE_SUCCEEDED") == 1, (name, kinds)


def reachable(chaos: Chaos) -> bool:
    try:
        chaos.client.list_runs(1)
    except ServiceUnavailableError:
        return False
    return True
