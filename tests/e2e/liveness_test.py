"""End to end: a worker's death is seen through its heartbeat stream, not its lease.

The stack's lease is ten minutes, so nothing in these tests can be declared dead by a lease: a
SIGKILLed worker's task runs again elsewhere because its connection broke (reason "connection
lost"), and a worker that stops gracefully says goodbye and is declared dead by nobody.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
import redis

from graflow import Client, workflow
from graflow.devstack import LocalStack
from graflow.run import RunEvent
from tests.e2e.conftest import log_records, module_stack, started, wait_for
from tests.e2e.tasks import collect, marked_sleep

NO_LEASE_EXPIRY = {
    "GRAFLOW_COORDINATOR_HEARTBEAT_INTERVAL_MS": "10000",
    "GRAFLOW_COORDINATOR_LEASE_TIMEOUT_MS": "600000",
}


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    with module_stack(request, workers=2, env=NO_LEASE_EXPIRY) as stack:
        yield stack


def worker_name(stack: LocalStack, pid: int) -> tuple[int, str]:
    [index] = [i for i, w in enumerate(stack.workers) if w.pid == pid]
    return index, f"dev-worker-{index}"


def declared_dead(stack: LocalStack, worker_id: str) -> list[str]:
    """The causes the coordinator gave for declaring ``worker_id`` dead."""
    return [
        r.get("cause", "")
        for r in log_records(stack, "coordinator")
        if r.get("event") == "worker declared dead; reclaiming its deliveries"
        and r.get("worker_id") == worker_id
    ]


def test_a_sigkilled_workers_task_is_redelivered_because_its_connection_broke(
    stack: LocalStack, client: Client, effects, fx: redis.Redis
) -> None:
    with workflow("killed") as wf:
        marked_sleep(task_id="s", seconds=1.0) >> collect
    run = client.submit(wf)
    wait_for(lambda: 1 in started(fx, run.id, "s"), what="attempt 1 to start")
    index, victim = worker_name(stack, started(fx, run.id, "s")[1])
    try:
        stack.kill(f"worker-{index}")
        assert run.result(timeout=60) == {"count": 1, "total": 2}
    finally:
        stack.restart(f"worker-{index}")

    events = [e for e in client.watch(run.id) if e.node_id == "s"]
    kinds = [(RunEvent.Type.Name(e.type), e.attempt) for e in events]
    assert kinds == [("TYPE_NODE_READY", 1), ("TYPE_NODE_RETRYING", 2), ("TYPE_NODE_SUCCEEDED", 2)]
    retry = events[1]
    assert retry.error.type == "WorkerLost"
    assert f"worker {victim} was declared dead: connection lost" in retry.error.message
    assert effects(run.id) == {"s": 1, "collect": 1}  # attempt 1 died before its effect
    causes = declared_dead(stack, victim)
    assert causes and all(c.startswith("connection lost") for c in causes), causes


def test_a_worker_stopping_gracefully_says_goodbye_and_is_declared_dead_by_nobody(
    stack: LocalStack, client: Client
) -> None:
    index = 0
    worker_id = f"dev-worker-{index}"
    before = len(declared_dead(stack, worker_id))
    stack.workers[index].send(signal.SIGTERM)
    wait_for(lambda: not stack.workers[index].running, what="the worker to stop")

    def deregistered() -> bool:
        return any(
            r.get("event") == "worker deregistered" and r.get("worker_id") == worker_id
            for r in log_records(stack, "coordinator")
        )

    try:
        wait_for(deregistered, what="the worker to deregister")
        goodbyes = [
            r for r in log_records(stack, "coordinator")
            if r.get("event") == "worker said goodbye on its heartbeat stream"
            and r.get("worker_id") == worker_id
        ]
        assert goodbyes
        assert len(declared_dead(stack, worker_id)) == before
    finally:
        stack.restart(f"worker-{index}")
    with workflow("after") as wf:
        marked_sleep(task_id="s", seconds=0.0)
    assert client.submit(wf).result(timeout=60) == 1
