"""A run that has ended starts no more work (invariant 11, issue 12), for every way a run ends.

Each test runs ``begin >> parallel(2,000 members) >> join`` (or a variant) on the 2-worker stack;
every task body records its start (ms) on an effects Redis that belongs to no part of the stack.
Asserted per run, from the run's end as recorded (``GetRun.ended_at_ms``):

- no body starts more than 0.5 s after the end (the worker learns of the end from ``gf:ended``
  within milliseconds, checks each read batch against the run's meta, and checks once more right
  before each body);
- every task node is accounted for: its body started, or its delivery was skipped and reported
  (``GetRun.skipped_deliveries``, > 0: the end came while deliveries were queued), or it was never
  dispatched;
- nothing was dead-lettered.

Each test prints its figures (bodies started after the end, after end + 0.5 s, skipped).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis

from graflow import Client, Workflow, critical, parallel, workflow
from graflow.devstack import LocalStack
from graflow_api.v1 import common_pb2
from graflow_runtime import keys
from graflow_runtime.local_redis import LocalRedis
from tests.e2e.conftest import start_stack, wait_for
from tests.e2e.tasks import (
    FANOUT,
    end_begin,
    end_cancel,
    end_fail,
    end_fanout,
    end_member,
    end_parent,
    end_terminate,
    end_waiter,
)

ENDED = {common_pb2.RUN_STATUS_SUCCEEDED, common_pb2.RUN_STATUS_FAILED, common_pb2.RUN_STATUS_CANCELED}
LIMIT_MS = 500


@dataclass
class Stacked:
    stack: LocalStack
    fx: redis.Redis  # the effects Redis (outside the stack)
    db: redis.Redis  # the stack's Redis


@pytest.fixture(scope="module")
def env() -> Iterator[Stacked]:
    effects = LocalRedis().start()
    stack, server = start_stack(env={"GRAFLOW_TEST_EFFECTS_URL": effects.url})
    fx, db = redis.Redis.from_url(effects.url), redis.Redis.from_url(stack.redis_url)
    try:
        yield Stacked(stack, fx, db)
    finally:
        fx.close()
        db.close()
        stack.stop(keep_logs=True)
        server.close()
        effects.close()


@pytest.fixture
def client(env: Stacked) -> Iterator[Client]:
    with env.stack.client(timeout=30) as c:
        yield c


@dataclass
class Figures:
    status: str
    nodes: int
    started: int
    started_after_end: int
    started_late: int  # more than LIMIT_MS after the end
    latest_start_after_end_ms: int
    skipped: int
    never_dispatched: int
    canceled_attempts: int


def settle(env: Stacked, client: Client, run_id: str, label: str) -> Figures:
    """Wait until the run ended and each of its task nodes is accounted for; its figures."""
    wait_for(lambda: client.get_run(run_id).status in ENDED, 60, f"run {run_id} to end")
    nodes = [n.node_id for n in client.get_run(run_id).nodes if n.kind == "task"]
    assert len(nodes) > FANOUT

    def accounted() -> bool:
        started = env.fx.hlen(f"starts:{run_id}")
        dispatched = env.db.hlen(keys.dispatch_record(run_id))
        return started + client.get_run(run_id).skipped_deliveries + (len(nodes) - dispatched) >= len(nodes)

    wait_for(accounted, 60, f"every node of {run_id} started, skipped or never dispatched")
    info = client.get_run(run_id)
    starts = {k.decode(): int(v) for k, v in env.fx.hgetall(f"starts:{run_id}").items()}
    figures = Figures(
        status=common_pb2.RunStatus.Name(info.status),
        nodes=len(nodes),
        started=len(starts),
        started_after_end=sum(1 for ms in starts.values() if ms > info.ended_at_ms),
        started_late=sum(1 for ms in starts.values() if ms > info.ended_at_ms + LIMIT_MS),
        latest_start_after_end_ms=max([ms - info.ended_at_ms for ms in starts.values()] + [0]),
        skipped=info.skipped_deliveries,
        never_dispatched=len(nodes) - env.db.hlen(keys.dispatch_record(run_id)),
        canceled_attempts=info.canceled_attempts,
    )
    print(f"\n[ended-runs] {label}: {json.dumps(figures.__dict__)}")
    late = sorted((ms - info.ended_at_ms, node) for node, ms in starts.items() if ms > info.ended_at_ms)
    assert figures.started_late == 0, f"bodies started more than {LIMIT_MS} ms after the end: {late[-10:]}"
    assert figures.started + figures.skipped + figures.never_dispatched == figures.nodes, figures
    assert env.db.xlen(keys.DEAD_LETTERS_STREAM) == 0
    return figures


def submit(client: Client, wf: Workflow) -> str:
    return client.submit(wf).id


def started(env: Stacked, run_id: str, count: int = 1) -> Callable[[], bool]:
    return lambda: env.fx.hlen(f"starts:{run_id}") >= count


def test_a_failed_node_outside_any_group(env, client):
    with workflow("ended-failed-node") as wf:
        begin = end_begin(task_id="begin")
        begin >> end_fail(task_id="boom")
        begin >> parallel(*[end_member(task_id=f"m{i}", i=i) for i in range(FANOUT)], name="members") >> \
            end_member(task_id="join")
    figures = settle(env, client, submit(client, wf), "failed node")
    assert figures.status == "RUN_STATUS_FAILED"
    assert figures.skipped > 0


@pytest.mark.parametrize(("way", "extra", "status"), [
    ("strict group", lambda: end_fail(task_id="bad"), "RUN_STATUS_FAILED"),
    ("terminate_workflow", lambda: end_terminate(task_id="stop"), "RUN_STATUS_SUCCEEDED"),
    ("cancel_workflow", lambda: end_cancel(task_id="stop"), "RUN_STATUS_CANCELED"),
])
def test_a_member_ending_the_run(env, client, way, extra, status):
    # A strict group failing with its member, or a member's terminate/cancel directive.
    wf = end_fanout(f"ended-{way.replace(' ', '-')}", extra=extra)
    figures = settle(env, client, submit(client, wf), way)
    assert figures.status == status
    assert figures.skipped > 0


def test_a_critical_group_failing(env, client):
    wf = end_fanout("ended-critical", extra=lambda: end_fail(task_id="bad"),
                    policy=lambda nodes: critical(nodes[0]))
    run_id = submit(client, wf)
    figures = settle(env, client, run_id, "critical group")
    assert figures.status == "RUN_STATUS_FAILED"
    assert client.get_run(run_id).failed_node_id == "members"
    assert figures.skipped > 0


def test_cancel_run_while_members_are_queued(env, client):
    run_id = submit(client, end_fanout("ended-cancel-run"))
    wait_for(started(env, run_id, 20), 30, "the first members to start")
    client.cancel(run_id, "enough")
    returned_ms = time.time_ns() // 1_000_000
    figures = settle(env, client, run_id, "CancelRun")
    assert figures.status == "RUN_STATUS_CANCELED"
    assert figures.skipped > 0
    starts = [int(v) for v in env.fx.hvals(f"starts:{run_id}")]
    assert not [ms for ms in starts if ms > returned_ms + LIMIT_MS]


def test_a_parent_run_canceled_ends_its_child_fanout(env, client):
    with workflow("ended-parent") as wf:
        end_parent(task_id="parent")
    parent = submit(client, wf)
    wait_for(lambda: bool(client.get_run(parent).child_run_ids), 30, "the child run")
    (child,) = client.get_run(parent).child_run_ids
    wait_for(started(env, child, 20), 30, "the child's first members to start")
    client.cancel(parent, "parent canceled")
    figures = settle(env, client, child, "parent canceled (child run)")
    assert figures.status == "RUN_STATUS_CANCELED"
    assert client.get_run(child).message == f"parent run {parent} was canceled"
    assert figures.skipped > 0


def test_a_running_body_sees_the_end_within_half_a_second_and_its_attempt_is_canceled(env, client):
    # The run fails once the waiter runs; the waiter loops on ctx.is_canceled(), then stops with
    # ctx.check_canceled(): a canceled attempt, not a failure.
    with workflow("ended-waiter") as wf:
        waiter = end_waiter(task_id="waiter")
        members = [end_member(task_id=f"m{i}", i=i) for i in range(FANOUT)]
        begin = end_begin(task_id="begin")
        begin >> parallel(waiter, *members, name="members") >> end_member(task_id="join")
        begin >> end_fail(task_id="boom", after="waiter")
    run_id = submit(client, wf)
    figures = settle(env, client, run_id, "running body (is_canceled)")
    info = client.get_run(run_id)
    assert figures.status == "RUN_STATUS_FAILED" and info.failed_node_id == "boom"
    # The run may end before the waiter's worker next reads gf:ended (every 0.2 s while it runs).
    wait_for(lambda: env.fx.hexists(f"seen:{run_id}", "waiter"), 10, "the waiter to see the end")
    seen = int(env.fx.hget(f"seen:{run_id}", "waiter"))
    assert 0 <= seen - info.ended_at_ms <= LIMIT_MS, seen - info.ended_at_ms
    wait_for(lambda: client.get_run(run_id).canceled_attempts >= 1, 10, "the waiter's canceled attempt")
    assert client.get_run(run_id).canceled_attempts == 1
    events = list(client.watch(run_id))
    assert not [e for e in events if e.node_id == "waiter" and "FAILED" in str(e.type)]


def test_a_worker_registered_after_the_end_runs_none_of_the_runs_deliveries(env, client):
    # No worker reads queue "late": every member waits in its stream until the run is canceled.
    with workflow("ended-late", queue="late") as wf:
        parallel(*[end_member(task_id=f"m{i}", i=i) for i in range(FANOUT)], name="members") >> \
            end_member(task_id="join")
    run_id = submit(client, wf)
    wait_for(lambda: env.db.hlen(keys.dispatch_record(run_id)) == FANOUT, 30, "the members' dispatch")
    client.cancel(run_id, "before any worker came")
    index = env.stack.start_worker(env={"GRAFLOW_WORKER_QUEUES": "late"})
    try:
        figures = settle(env, client, run_id, "worker registered after the end")
        assert figures.started == 0
        assert figures.skipped == FANOUT
        # Logged once per run by that worker, with the count.
        log_path = env.stack.log_path(f"worker-{index}")

        def logged() -> list[dict]:
            lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
            return [r for r in lines
                    if r.get("run_id") == run_id and "skipped" in r and "ended run" in r["event"]]

        wait_for(lambda: bool(logged()), 10, "the skip count in the late worker's log")
        assert [r["skipped"] for r in logged()] == [FANOUT]
    finally:
        env.stack.stop_worker(index)

