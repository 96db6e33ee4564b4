"""End to end: delivery guarantees with real processes and a short lease (1 s).

A worker killed mid-task, a worker paused past its lease, a task longer than the lease, a retry
waiting longer than the lease, a start-to-close timeout, and a poison message that kills every
worker running it.

Under load: these tests hold while no process of the stack is kept off the CPU for longer than
the lease (1 s). A worker starved that long (a CPU hog at normal priority on both cores, a second
stack at once, a stopped VM) is declared dead, its attempt is redelivered, and the counts asserted
here (each body once, attempts 1 and 2) change: a fault nobody injected, not a product bug.
Background load at a lower priority (`nice`) or one core for the whole suite does not do that
(docs/testing.md, "Flaky tests").
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from graflow import Client, RunFailedError, parallel, workflow
from graflow.devstack import LocalStack
from graflow.operators import Operators
from graflow.run import RunEvent
from tests.e2e.conftest import KEEP_LOGS, log_records, module_stack, start_stack, started, wait_for
from tests.e2e.tasks import collect, crash_worker, fail_then_retry_late, gated, item, marked_sleep, overrun

LEASE_MS = 1000
FAST_LEASE = {
    "GRAFLOW_COORDINATOR_LEASE_TIMEOUT_MS": str(LEASE_MS),
    "GRAFLOW_COORDINATOR_HEARTBEAT_INTERVAL_MS": "200",
    "GRAFLOW_COORDINATOR_LIVENESS_CHECK_MS": "100",
    "GRAFLOW_COORDINATOR_QUEUE_TRIM_INTERVAL_MS": "1000",
    "GRAFLOW_COORDINATOR_MAX_DELIVERIES": "3",
    # Below the lease minus the heartbeat interval (see the worker's README).
    "GRAFLOW_WORKER_READ_BLOCK_MS": "500",
    "GRAFLOW_SCHEDULER_STATS_LOG_INTERVAL_S": "1",
}


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    with module_stack(request, workers=3, env=FAST_LEASE) as stack:
        yield stack



def worker_index(stack: LocalStack, pid: int) -> int:
    [index] = [i for i, w in enumerate(stack.workers) if w.pid == pid]
    return index


def history(client: Client, run_id: str) -> list[RunEvent]:
    return list(client.watch(run_id))


def of_node(events: list[RunEvent], node_id: str) -> list[tuple[str, int, str]]:
    """(event type, attempt, error type) of one node's NODE_* events."""
    named = [(RunEvent.Type.Name(e.type).removeprefix("TYPE_"), e) for e in events if e.node_id == node_id]
    return [(name, e.attempt, e.error.type) for name, e in named if name.startswith("NODE_")]


def restart_dead_workers(stack: LocalStack) -> None:
    for index, process in enumerate(stack.workers):
        if not process.running:
            stack.restart(f"worker-{index}")


def test_a_worker_killed_mid_task_has_the_task_completed_on_another_worker(stack, client, effects, fx):
    with workflow("killed") as wf:
        marked_sleep(task_id="s", seconds=1.0) >> collect
    run = client.submit(wf)
    wait_for(lambda: 1 in started(fx, run.id, "s"), what="attempt 1 to start")
    victim = started(fx, run.id, "s")[1]
    try:
        stack.kill(f"worker-{worker_index(stack, victim)}")

        assert run.result(timeout=60) == {"count": 1, "total": 2}
    finally:
        restart_dead_workers(stack)
    assert started(fx, run.id, "s")[2] != victim
    assert effects(run.id) == {"s": 1, "collect": 1}  # attempt 1 died before its effect
    assert of_node(history(client, run.id), "s") == [
        ("NODE_READY", 1, ""),
        ("NODE_RETRYING", 2, "WorkerLost"),
        ("NODE_SUCCEEDED", 2, ""),
    ]


def test_a_second_sigterm_exits_at_once_and_the_unfinished_task_is_reclaimed(stack, client, effects, fx):
    """The first SIGTERM starts a drain (grace 5 s, longer than the wait below); the second one
    must end the process at once, and the task it held then completes on another worker."""
    with workflow("second-signal") as wf:
        marked_sleep(task_id="s", seconds=6.0)
    run = client.submit(wf)
    wait_for(lambda: 1 in started(fx, run.id, "s"), what="attempt 1 to start")
    victim = started(fx, run.id, "s")[1]
    process = stack.workers[worker_index(stack, victim)]
    try:
        process.send(signal.SIGTERM)
        wait_for(lambda: "draining" in stack.log_tail(f"worker-{worker_index(stack, victim)}", 80),
                 timeout_s=10, what="the worker to start draining")
        process.send(signal.SIGTERM)
        wait_for(lambda: not process.running, timeout_s=3, what="the worker to exit on the second signal")

        assert run.result(timeout=60) == 2
    finally:
        restart_dead_workers(stack)
    assert started(fx, run.id, "s")[2] != victim
    assert effects(run.id) == {"s": 1}  # attempt 1 was cut off before its effect


def test_a_worker_paused_past_its_lease_finds_its_work_taken_and_its_late_outcome_rejected(
    stack, client, effects, fx
):
    with workflow("paused") as wf:
        gated(task_id="a") >> collect
    run = client.submit(wf)
    wait_for(lambda: 1 in started(fx, run.id, "a"), what="attempt 1 to start")
    victim = started(fx, run.id, "a")[1]
    name = f"worker-{worker_index(stack, victim)}"
    stack.pause(name)
    try:
        wait_for(
            lambda: any(pid != victim for pid in started(fx, run.id, "a").values()),
            what="the task to start again on another worker",
        )
    finally:
        stack.resume(name)
    [again] = [attempt for attempt, pid in started(fx, run.id, "a").items() if pid != victim]

    fx.set(f"gate:{run.id}:a:1", 1)  # the paused worker finishes attempt 1 and reports it, late

    def rejected() -> bool:
        return any(
            r.get("event", "").startswith("stale outcome rejected")
            and (r.get("run_id"), r.get("node_id"), r.get("attempt")) == (run.id, "a", 1)
            for r in log_records(stack, "scheduler")
        )

    wait_for(rejected, what="the scheduler to reject the late outcome of attempt 1")
    fx.set(f"gate:{run.id}:a:{again}", 1)
    assert run.result(timeout=60) == {"count": 1, "total": again}  # collect got the new attempt's result
    assert effects(run.id) == {"a": 2, "collect": 1}  # both bodies ran; the run state saw one
    events = history(client, run.id)
    assert [e for e in of_node(events, "a") if e[0] == "NODE_SUCCEEDED"] == [("NODE_SUCCEEDED", again, "")]
    assert ("NODE_RETRYING", 2, "WorkerLost") in of_node(events, "a")
    assert [e.worker_id for e in events if e.node_id == "a" and e.type == RunEvent.TYPE_NODE_SUCCEEDED] != [
        f"dev-worker-{worker_index(stack, victim)}"
    ]

    def counted() -> bool:
        totals = [r for r in log_records(stack, "scheduler") if r.get("event") == "outcome consumer totals"]
        return bool(totals) and totals[-1]["stale"] >= 1

    wait_for(counted, what="the scheduler's totals to count the stale outcome")


def test_a_task_longer_than_the_lease_keeps_it_while_its_worker_heartbeats(client, effects, fx):
    with workflow("long") as wf:
        marked_sleep(task_id="long", seconds=3 * LEASE_MS / 1000)
    run = client.submit(wf)

    assert run.result(timeout=60) == 1
    assert list(started(fx, run.id, "long")) == [1]
    assert effects(run.id) == {"long": 1}
    assert [e[0] for e in of_node(history(client, run.id), "long")] == ["NODE_READY", "NODE_SUCCEEDED"]


def test_a_retry_waiting_longer_than_the_lease_runs_each_attempt_once(client, effects, fx):
    with workflow("late-retry") as wf:
        fail_then_retry_late(task_id="r") >> collect
    run = client.submit(wf)

    assert run.result(timeout=60) == {"count": 1, "total": 2}
    assert sorted(started(fx, run.id, "r")) == [1, 2]
    assert effects(run.id) == {"r": 2, "collect": 1}
    assert of_node(history(client, run.id), "r") == [
        ("NODE_READY", 1, ""),
        ("NODE_RETRYING", 2, "ConnectionError"),
        ("NODE_SUCCEEDED", 2, ""),
    ]


def test_an_attempt_over_its_start_to_close_timeout_is_retried_then_fails_the_node(client, effects):
    with workflow("timeout") as wf:
        overrun(task_id="o", seconds=3.0)
    run = client.submit(wf)

    with pytest.raises(RunFailedError) as failed:
        run.result(timeout=60)
    assert (failed.value.error.node_id, failed.value.error.type) == ("o", "TaskTimeout")
    assert "0.5 s" in failed.value.error.message
    assert of_node(history(client, run.id), "o") == [
        ("NODE_READY", 1, ""),
        ("NODE_RETRYING", 2, "TaskTimeout"),
        ("NODE_FAILED", 2, "TaskTimeout"),
    ]
    assert effects(run.id) == {"o": 2}


def test_a_task_that_kills_every_worker_running_it_is_dead_lettered_and_other_runs_keep_flowing():
    stack, server = start_stack(workers=4, env=FAST_LEASE)  # 3 die (max_deliveries 3), 1 stays
    try:
        with stack.client(timeout=30) as client:
            with workflow("poison") as poison_wf:
                crash_worker(task_id="p")
            with workflow("healthy") as healthy_wf:
                parallel(*[item(task_id=f"i{i}", i=i) for i in range(20)]) >> collect
            poison = client.submit(poison_wf)
            during = client.submit(healthy_wf)

            with pytest.raises(RunFailedError) as failed:
                poison.result(timeout=90)
            after = client.submit(healthy_wf)
            assert during.result(timeout=60) == after.result(timeout=60) == {"count": 20, "total": 190}

            assert of_node(history(client, poison.id), "p") == [
                ("NODE_READY", 1, ""),
                ("NODE_RETRYING", 2, "WorkerLost"),
                ("NODE_RETRYING", 3, "WorkerLost"),
                ("NODE_FAILED", 3, "PoisonMessage"),
            ]

        assert (failed.value.error.node_id, failed.value.error.type) == ("p", "PoisonMessage")
        assert "the worker running it died 3 times" in failed.value.error.message
        assert sum(1 for w in stack.workers if not w.running) == 3
        with Operators(stack.coordinator_address) as ops:
            letters = [x for x in ops.dead_letters() if x.run_id == poison.id]
        assert [(x.node_id, x.attempt, x.queue) for x in letters] == [("p", 3, "default")]
        assert letters[0].reason.startswith("poison message: the worker running it died 3 times")
    finally:
        stack.stop(keep_logs=KEEP_LOGS)
        server.close()
