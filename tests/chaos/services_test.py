"""Chaos: the result-store, Redis, the scheduler or the coordinator dies in the middle of runs.

No worker dies in these tests, so no task has a reason to run twice: each asserts both that every
task body's side effect happened exactly once and that every run's history saw each node succeed
exactly once.
"""

from __future__ import annotations

import signal
import time

import pytest

from graflow import parallel, workflow
from graflow_runtime import keys
from tests.chaos.conftest import LEASE_S, QUEUE, Chaos, chaos_stack, wait_until
from tests.chaos.tasks import chaos_hold, chaos_step
from tests.e2e.tasks import collect, item, source


def fan_in(name: str, members: int, seconds: float) -> object:
    """source >> (members x step) >> collect: ``collect`` returns count and total of the members."""
    with workflow(name) as wf:
        source(task_id="source", value=0) >> parallel(
            *[chaos_step(task_id=f"s{i}", i=i, seconds=seconds) for i in range(members)]
        ) >> collect
    return wf


def expected_fan_in(members: int) -> dict[str, int]:
    return {"count": members, "total": sum(range(members))}


def done_count(chaos: Chaos, run_ids: list[str]) -> int:
    return sum(len(chaos.effects(run_id)) for run_id in run_ids)


def assert_all_once(chaos: Chaos, runs: list, wf: object, members: int) -> None:
    for run in runs:
        assert run.result(timeout=10) == expected_fan_in(members)
        chaos.assert_effects_once(run.id, wf.spec())
        chaos.assert_run_state_once(run.id, wf.spec())


def pending(chaos: Chaos) -> int:
    """Deliveries read by workers and not acknowledged."""
    return int(chaos.bus.xpending(QUEUE, "workers")["pending"])


def last_outcome_id(chaos: Chaos) -> bytes:
    return chaos.bus.xinfo_stream(keys.OUTCOMES_STREAM)["last-generated-id"]


def test_result_store_down_during_completions_workers_hold_their_outcomes_and_carry_on():
    """The result-store is SIGKILLed while two 120-task fan-ins run, and restarted 3 s later, with
    every result going through PutResults (INLINE_RESULT_MAX_BYTES=0: the path of results above the
    limit). Asserted: while it is down (after the tasks already running finished) no outcome is
    appended and no delivery is acknowledged (the workers hold their finished attempts) and no new
    task starts; once it is back the workers carry on by themselves: every run succeeds, every task
    body ran exactly once, every node succeeded once."""
    with chaos_stack(env={"GRAFLOW_WORKER_INLINE_RESULT_MAX_BYTES": "0"}) as chaos:
        wf = fan_in("result-store-down", 120, 0.05)
        runs = [chaos.client.submit(wf) for _ in range(2)]
        ids = [run.id for run in runs]
        wait_until(lambda: done_count(chaos, ids) >= 40, 30, "40 tasks to finish")
        chaos.stack.kill("result-store")
        time.sleep(1.0)  # commits already past PutResults and tasks already running finish
        before = (last_outcome_id(chaos), pending(chaos), done_count(chaos, ids))
        time.sleep(3.0)
        outcome_id, held, finished = before
        assert last_outcome_id(chaos) == outcome_id, "an outcome was appended while results were not stored"
        assert pending(chaos) == held > 0, "the finished attempts were not held unacknowledged"
        assert done_count(chaos, ids) == finished, "a task started while results could not be stored"
        chaos.stack.restart("result-store")
        chaos.wait_runs(ids, timeout_s=45)
        assert_all_once(chaos, runs, wf, 120)


def test_result_store_down_small_results_still_complete_end_to_end():
    """The result-store is SIGKILLed and stays down while runs of small results (inline in their
    outcomes, the default limit) are submitted, run and answered: a workflow whose graph the
    scheduler stored before (so SubmitRun needs no PutGraph) and whose tasks need nothing else
    from it (every parameter bound: no upstream result, no channel value). Asserted: every run
    succeeds with its result, no delivery is left pending, and once the result-store is back,
    every task body ran exactly once, every node succeeded once, and each stored result is the
    applied attempt's (written by the scheduler with the outcome)."""
    with chaos_stack() as chaos:
        with workflow("result-store-down-small") as wf:
            chaos_step(task_id="first", i=1, seconds=0) >> parallel(
                *[chaos_step(task_id=f"s{i}", i=i, seconds=0) for i in range(20)]
            ) >> chaos_step(task_id="last", i=99, seconds=0)
        warm = chaos.client.submit(wf)  # stores the graph while the result-store is up
        assert warm.result(timeout=30) == 99
        chaos.stack.kill("result-store")
        runs = [chaos.client.submit(wf) for _ in range(3)]
        for run in runs:
            assert run.result(timeout=30) == 99
        assert pending(chaos) == 0
        chaos.stack.restart("result-store")
        for run in [warm, *runs]:
            chaos.assert_effects_once(run.id, wf.spec())
            chaos.assert_run_state_once(run.id, wf.spec())


@pytest.mark.parametrize(("sig", "fsync"), [(signal.SIGTERM, "everysec"), (signal.SIGKILL, "always")],
                         ids=["sigterm", "sigkill-fsync-always"])
def test_redis_restart_in_the_middle_of_runs_loses_nothing_and_repeats_nothing(sig, fsync):
    """The stack's Redis (AOF; ``appendfsync always`` for the SIGKILL case, so that nothing it
    acknowledged can be lost) is restarted while two 100-task fan-ins run. Every service reconnects
    by itself; every run succeeds, every task body ran exactly once, every node succeeded once."""
    with chaos_stack(fsync=fsync) as chaos:
        wf = fan_in(f"redis-{sig.name.lower()}", 100, 0.05)
        runs = [chaos.client.submit(wf) for _ in range(2)]
        ids = [run.id for run in runs]
        wait_until(lambda: done_count(chaos, ids) >= 50, 30, "50 tasks to finish")
        chaos.stack.restart("redis", sig=sig)
        chaos.wait_runs(ids, timeout_s=45)
        assert_all_once(chaos, runs, wf, 100)


def test_scheduler_killed_during_a_fan_in_every_member_joins_once():
    """The scheduler is SIGKILLed while the 200 members of a group finish, and restarted. The outcomes
    it had read but not acknowledged are claimed by its successor; the others wait in the outcome
    stream. The join counts each member once: ``collect`` sees all 200, every task body ran exactly
    once and every node succeeded once."""
    with chaos_stack() as chaos:
        wf = fan_in("scheduler-fan-in", 200, 0.2)
        run = chaos.client.submit(wf)
        wait_until(lambda: done_count(chaos, [run.id]) >= 60, 30, "60 members to finish")
        chaos.stack.restart("scheduler", sig=signal.SIGKILL)
        chaos.wait_runs([run.id], timeout_s=45)
        assert_all_once(chaos, [run], wf, 200)


def test_scheduler_killed_holding_the_outcome_that_completes_a_join_releases_the_successor_once():
    """The deterministic form of the fan-in crash: the scheduler dies after applying the outcome of
    the last of 200 members and before acknowledging it. To hold it there, Redis refuses the
    scheduler's dispatch when that member finishes (the run's dispatch record is briefly replaced
    by a string: WRONGTYPE), so the scheduler applies the outcome (``collect`` becomes READY) but
    cannot enqueue ``collect`` and keeps the outcome pending; then it is SIGKILLed. The record is
    put back and the scheduler comes back; the successor claims the dead process's pending outcome,
    applies it again as a duplicate (which changes nothing and repeats the dispatch) and ``collect``
    runs exactly once. (Before issue 13 the coordinator was killed instead: the scheduler no longer
    calls it to dispatch.) Asserted: side effects and run state exactly once."""
    with chaos_stack() as chaos:
        with workflow("scheduler-join") as wf:
            members = [chaos_step(task_id=f"s{i}", i=i) for i in range(199)]
            source(task_id="source", value=0) >> parallel(
                *members, chaos_hold(task_id="last", gate="join", value=199)
            ) >> collect
        run = chaos.client.submit(wf)
        chaos.wait_marks("started", run.id, "last")
        wait_until(lambda: done_count(chaos, [run.id]) == 200, 30, "the other 199 members to finish")
        wait_until(lambda: chaos.bus.hget(keys.run_state(run.id), "s198") == b"SUCCEEDED"
                   and chaos.bus.xpending(keys.OUTCOMES_STREAM, "scheduler")["pending"] == 0, 30,
                   "the scheduler to apply the members' outcomes")
        record = keys.dispatch_record(run.id)
        dispatched = chaos.bus.hgetall(record)
        chaos.bus.delete(record)
        chaos.bus.set(record, "not a hash")  # Redis refuses the scheduler's dispatch of this run
        chaos.open_gate("join")
        wait_until(lambda: chaos.bus.hget(keys.run_state(run.id), "collect") == b"READY", 30,
                   "the last outcome to be applied")
        assert chaos.bus.xpending(keys.OUTCOMES_STREAM, "scheduler")["pending"] >= 1
        chaos.stack.kill("scheduler")
        chaos.bus.delete(record)
        chaos.bus.hset(record, mapping=dispatched)
        assert chaos.bus.hget(record, "collect") is None  # never enqueued
        chaos.stack.restart("scheduler")
        chaos.wait_runs([run.id], timeout_s=45)
        assert run.result(timeout=10) == expected_fan_in(200)
        chaos.assert_effects_once(run.id, wf.spec())
        chaos.assert_run_state_once(run.id, wf.spec())


def test_coordinator_down_longer_than_the_lease_takes_no_work_from_healthy_workers():
    """The coordinator is SIGKILLed while a healthy worker runs ``g`` and stays down for twice the
    lease; its workers cannot heartbeat meanwhile (nobody can receive them). After the restart no
    worker that kept running may be declared dead for that silence: ``g`` is not redelivered.
    Asserted: ``g`` started once, side effects and run state exactly once (no retry)."""
    with chaos_stack() as chaos:
        with workflow("coordinator-outage") as wf:
            source(task_id="source", value=1) >> chaos_hold(task_id="g", gate="outage") >> collect
        run = chaos.client.submit(wf)
        chaos.wait_marks("started", run.id, "g")
        chaos.stack.kill("coordinator")
        time.sleep(2 * LEASE_S)  # the outage
        restarted_ms = int(time.time() * 1000)
        chaos.stack.restart("coordinator")
        workers = [f"dev-worker-{i}" for i in range(len(chaos.stack.workers))]

        def all_heartbeating() -> bool:
            return all((chaos.bus.zscore(keys.WORKERS_INDEX, w) or 0) > restarted_ms for w in workers)

        wait_until(all_heartbeating, 30, "every worker to heartbeat to the new coordinator")
        time.sleep(LEASE_S)  # a liveness pass with everybody heartbeating again
        chaos.open_gate("outage")
        chaos.wait_runs([run.id])
        starts = chaos.marks("started", run.id, "g")
        chaos.wait_marks("done", run.id, "g", count=len(starts))
        assert len(starts) == 1, f"g was taken from its healthy worker and started again: {starts}"
        assert run.result(timeout=10) == {"count": 1, "total": 2}
        chaos.assert_effects_once(run.id, wf.spec())
        chaos.assert_run_state_once(run.id, wf.spec())


def test_coordinator_killed_during_dispatch_of_a_large_fan_out_every_task_runs_once():
    """Two runs each release a 300-task fan-out when their held first task finishes; the coordinator
    is SIGKILLed at that moment and restarted. Since issue 13 the scheduler enqueues the fan-out
    itself, so the dispatch no longer meets the dead coordinator: the fan-out is enqueued whole
    while the workers lose their heartbeat streams and find the restarted coordinator (none may be
    declared dead for that, nothing may run twice). Every run succeeds, every task body ran exactly
    once, every node succeeded once."""
    with chaos_stack() as chaos:
        with workflow("coordinator-fan-out") as wf:
            chaos_hold(task_id="g", gate="fan-out", value=0) >> parallel(
                *[item(task_id=f"i{i}", i=i) for i in range(300)]
            ) >> collect
        runs = [chaos.client.submit(wf) for _ in range(2)]
        for run in runs:
            chaos.wait_marks("started", run.id, "g")
        chaos.open_gate("fan-out")
        # The kill lands as the first task's outcome is committed and its fan-out dispatched.
        wait_until(lambda: chaos.marks("done", runs[0].id, "g"), 10, "g to finish", interval_s=0.001)
        chaos.stack.kill("coordinator")
        chaos.stack.restart("coordinator")
        chaos.wait_runs([run.id for run in runs], timeout_s=45)
        for run in runs:
            assert run.result(timeout=10) == {"count": 300, "total": sum(range(300))}
            chaos.assert_effects_once(run.id, wf.spec())
            chaos.assert_run_state_once(run.id, wf.spec())
