"""End to end on a Redis Cluster (issue 10): the four services as processes on a local cluster of six
redis-server processes (3 primaries, 3 replicas) with four cells, one per slot range, so that the
runs of a test land on every primary. The cases are those whose keys span cells or slots: runs in
every cell at once and ListRuns paging over them, a delayed retry (the cell's retry timer), a child
run (in its parent's cell), a question answered by a person (ListFeedback over every cell), a cancel
that reaches a running task and its child, and dead letters of two cells listed together and
replayed. The cluster's nodes have the services' ACL users loaded and each process connects as its own,
so the last test checks that no node refused any command on the way. The tasks record their effects
in a side redis-server (``effects``)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator
from itertools import count

import grpc
import pytest
import redis

from graflow import Client, parallel, workflow
from graflow.devstack import LocalStack
from graflow.errors import RunCanceledError
from graflow.operators import Operators
from graflow_api.v1 import scheduler_pb2, scheduler_pb2_grpc
from graflow_runtime import keys
from graflow_runtime.redis_client import connect_cluster
from graflow_runtime.signing import BusKeys, Kind
from tests.e2e.conftest import module_stack, wait_for
from tests.e2e.tasks import (
    add_one,
    ask,
    cooperative_wait,
    fail_then_retry_late,
    flaky,
    source,
    spawn_child,
    spawn_waiting_child,
)

CELLS = 4
LAYOUT = keys.Layout(cells=CELLS, cluster=True)


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    with module_stack(request, 2, redis_cluster=True, cells=CELLS, redis_acl=True) as started:
        # The start-up's durability checks were refused CONFIG (as they expect: they read INFO then).
        for node in started.redis_cluster.running():  # type: ignore[union-attr]
            with redis.Redis.from_url(node.url) as admin:
                admin.acl_log_reset()
        yield started


@pytest.fixture
def cell_of() -> Iterator[Callable[[str], int]]:
    """The cell of a run id in the stack's layout (this process names keys as the services do)."""
    keys.configure(LAYOUT)
    yield keys.cell_of
    keys.configure(keys.Layout())


def test_runs_in_every_cell_complete_once_each_and_list_runs_pages_over_all_of_them(
    stack: LocalStack, client: Client, effects: Callable[[str], dict[str, int]], cell_of: Callable[[str], int]
) -> None:
    # Four runs per cell: a run submitted with an idempotency key lives in the key's cell.
    prefix, idempotency_keys = secrets.token_hex(4), []
    for i in count():
        key = f"{prefix}-{i}"
        cell = keys.cell_of_idempotency_key(key)
        if sum(keys.cell_of_idempotency_key(k) == cell for k in idempotency_keys) < 4:
            idempotency_keys.append(key)
        if len(idempotency_keys) == 4 * CELLS:
            break
    runs = []
    for i, key in enumerate(idempotency_keys):
        with workflow(f"spread-{i}") as wf:
            source(task_id="a", value=i) >> add_one(task_id="b")
        runs.append(client.submit(wf, idempotency_key=key))
    assert [cell_of(run.id) for run in runs] == [keys.cell_of_idempotency_key(k) for k in idempotency_keys]
    assert sorted(cell_of(run.id) for run in runs) == sorted(list(range(CELLS)) * 4)
    assert [run.result(timeout=60) for run in runs] == [i + 1 for i in range(16)]
    for run in runs:
        assert effects(run.id) == {"a": 1, "b": 1}

    ids, token = [], ""
    with grpc.insecure_channel(stack.scheduler_address) as channel:
        scheduler = scheduler_pb2_grpc.SchedulerStub(channel)
        while True:
            page = scheduler.ListRuns(scheduler_pb2.ListRunsRequest(limit=5, page_token=token), timeout=10)
            ids += [run.run_id for run in page.runs]
            token = page.next_page_token
            if not token:
                break
    assert len(ids) == len(set(ids))  # no run twice across pages
    assert {run.id for run in runs} <= set(ids)


def test_a_delayed_retry_a_child_run_and_a_question_complete_across_cells(
    client: Client, effects: Callable[[str], dict[str, int]], cell_of: Callable[[str], int]
) -> None:
    with workflow("cluster-mix") as wf:
        source(task_id="src", value=2) >> parallel(
            flaky(task_id="retried", fail_times=1),
            fail_then_retry_late(task_id="late"),
            spawn_child(task_id="parent", n=4),
            ask(task_id="approve", prompt="ship it?"),
        )
    run = client.submit(wf)
    wait_for(lambda: len(client.list_feedback()) >= 1, timeout_s=60, what="the question in ListFeedback")
    (request,) = (r for r in client.list_feedback() if r.run_id == run.id)
    client.respond_feedback(run.id, request.request_id, approved=True, responded_by="alice")
    run.result(timeout=120)
    results = run.results(["retried", "late", "parent", "approve"])
    assert (results["retried"], results["parent"]) == (2, 50)
    assert results["approve"]["approved"] is True
    (child,) = client.get_run(run.id).child_run_ids
    assert cell_of(child) == cell_of(run.id)  # a child run lives in its parent's cell
    assert effects(run.id)["late"] == 2  # attempt 1 failed, attempt 2 after the delay
    assert effects(child) == {"a": 1, "b": 1}


def test_a_cancel_reaches_a_running_task_and_the_child_run(client: Client, fx: redis.Redis) -> None:
    with workflow("cluster-cancel") as wf:
        parallel(cooperative_wait(task_id="work", seconds=120), spawn_waiting_child(task_id="parent"))
    run = client.submit(wf)
    wait_for(lambda: bool(client.get_run(run.id).child_run_ids), 60, "the child run")
    (child,) = client.get_run(run.id).child_run_ids
    for run_id, node in ((run.id, "work"), (child, "long")):
        wait_for(lambda r=run_id, n=node: fx.exists(f"running:{r}:{n}"), 60, f"{node} to start")
    run.cancel("stopped by the test")
    for run_id, node in ((run.id, "work"), (child, "long")):
        wait_for(lambda r=run_id, n=node: fx.exists(f"observed:{r}:{n}"), 60, f"{node} to see the cancel")
    with pytest.raises(RunCanceledError, match="stopped by the test"):
        run.result(timeout=30)


def test_dead_letters_of_two_cells_are_listed_together_and_replayed(
    stack: LocalStack, cell_of: Callable[[str], int]
) -> None:
    bus = BusKeys.from_settings([stack.signing_key], "") if stack.signing_key else BusKeys()
    raws = {cell: f"not an envelope, cell {cell}".encode() for cell in (1, 3)}

    async def enqueue() -> None:
        cluster = connect_cluster(stack.redis_url)
        try:
            for cell, raw in raws.items():
                fields = {keys.ENVELOPE_FIELD: raw, **bus.sign_fields(Kind.ENVELOPE, raw)}
                await cluster.xadd(keys.queue_stream("default", cell), fields)
        finally:
            await cluster.aclose()

    asyncio.run(enqueue())

    def ours(ops: Operators) -> dict[bytes, str]:
        return {letter.raw: letter.id for letter in ops.dead_letters(limit=0) if letter.raw in raws.values()}

    with Operators(stack.coordinator_address) as ops:
        wait_for(lambda: len(ours(ops)) == 2, what="a dead letter from each cell")
        first = ours(ops)
        assert sorted(letter_id.split("-")[0] for letter_id in first.values()) == ["1", "3"]  # its cell
        assert ops.replay_dead_letters(list(first.values())) == 2
        # Undecodable again: dead-lettered again, under new ids.
        wait_for(lambda: len(ours(ops)) == 2 and set(ours(ops).values()).isdisjoint(first.values()),
                 what="the replayed entries dead-lettered again")


def test_no_node_refused_any_command_of_any_service(stack: LocalStack) -> None:
    """Runs last: every path above (and the background loops) ran as the services' own users."""
    assert stack.redis_cluster is not None
    refused = {}
    for node in stack.redis_cluster.running():
        with redis.Redis.from_url(node.url) as admin:  # the operators' user
            refused[node.port] = [(e["username"], e["context"], e["object"]) for e in admin.acl_log()]
    assert refused == {port: [] for port in refused}
