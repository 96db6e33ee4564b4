"""The chaos harness: a real stack (tests.e2e.conftest.start_stack) plus an observer Redis.

Every chaos stack has two redis-servers: the stack's own (faults may kill or restart it) and an
*observer* where tasks record their side effects, start marks and gates (tests.chaos.tasks), so a
fault never touches what the test measures. :class:`Chaos` holds the stack, a client and the two
connections, with the helpers the tests share: gates, marks, bounded waits, and the two
exactly-once assertions:

- :meth:`Chaos.assert_effects_once`: every task body's side effect happened exactly once
  (``INCR effects:<run>:<node>`` == 1) - for faults that must not make any task run again;
- :meth:`Chaos.assert_run_state_once`: the run SUCCEEDED and its event history saw every node
  succeed exactly once (no failure, only the expected retries, one terminal event), with each
  task's stored result written by the attempt the history applied - for faults where
  at-least-once delivery legitimately runs a task body again.

Under load: the stacks run with a 1.5 s lease (``LIVENESS``). The assertions hold while no
process is kept off the CPU for longer than that; a worker starved past its lease is declared dead
and its task runs again, which :meth:`Chaos.assert_effects_once` rightly reports. That is why the
chaos files run one after the other (``batch_compatibility_tag``), and why the flake hunt loads the
machine with ``nice -n 19`` burners or one core, not with hogs at normal priority
(docs/testing.md, "Flaky tests").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import grpc
import pytest
import redis

from graflow import GraflowError
from graflow.devstack import LocalStack
from graflow.run import ENDED_STATUSES, RunEvent, event_type_name, node_state_name, status_name
from graflow_api.v1 import coordinator_pb2, coordinator_pb2_grpc, messages_pb2, workflow_pb2
from graflow_api.v1 import result_store_pb2 as rs_pb2
from graflow_api.v1 import result_store_pb2_grpc as rs_grpc
from graflow_runtime import keys
from graflow_runtime.grpc_options import client_channel_args
from graflow_runtime.local_redis import LocalRedis, LocalRedisCluster
from tests.e2e.conftest import TASKS, start_stack

TASK_MODULES = (TASKS, "tests.chaos.tasks")
QUEUE = keys.queue_stream("default")
# The chaos stacks' lease: a worker silent this long is declared dead. 1.5 s with heartbeats every
# 250 ms, the coordinator's defaults before issue 13 (which sees a SIGKILLed worker's death on its
# heartbeat stream at once and made the lease, 40 s by default, the fallback for workers whose
# connection stays open): short, so that a paused worker is declared dead well within the tests'
# waits and a retry's backoff can outlast the lease.
LEASE_S = 1.5
LIVENESS = {
    "GRAFLOW_COORDINATOR_LEASE_TIMEOUT_MS": str(int(LEASE_S * 1000)),
    "GRAFLOW_COORDINATOR_HEARTBEAT_INTERVAL_MS": "250",
    "GRAFLOW_COORDINATOR_LIVENESS_CHECK_MS": "100",
}
# Outcomes left pending by a dead scheduler process are claimed by its successor after this long
# (the default, 30 s, would make the scheduler test wait half a minute).
SCHEDULER_CLAIM_IDLE_MS = 3000
# The restricted Redis user the workers log in as when a test needs to refuse their commits.
WORKER_USER, WORKER_PASSWORD = "chaos-worker", "chaos-worker-password"
KEEP_LOGS = bool(os.environ.get("GRAFLOW_TEST_KEEP_LOGS"))

TaskSpec = workflow_pb2.WorkflowSpec


def task_node_ids(spec: TaskSpec) -> set[str]:
    return {node.id for node in spec.nodes}


class Chaos:
    """``server`` is the stack's redis-server and ``bus`` a client of it; on a Redis Cluster
    (``cluster``) both are None."""

    def __init__(self, stack: LocalStack, server: LocalRedis | None, observer: LocalRedis,
                 cluster: LocalRedisCluster | None = None) -> None:
        self.stack = stack
        self.server = server
        self.cluster = cluster
        self.observer = observer
        self.fx = redis.Redis.from_url(observer.url)
        self.bus = redis.Redis.from_url(server.url) if server is not None else None
        self.client = stack.client(timeout=20)
        self._channels: dict[str, grpc.Channel] = {}

    def close(self) -> None:
        self.client.close()
        for channel in self._channels.values():
            channel.close()
        self.fx.close()
        if self.bus is not None:
            self.bus.close()

    # ---- observing tasks ----
    def effects(self, run_id: str) -> dict[str, int]:
        """node id -> times its task body recorded its side effect."""
        prefix = f"effects:{run_id}:"
        names = list(self.fx.scan_iter(match=f"{prefix}*", count=1000))
        values = self.fx.mget(names) if names else []
        return {k.decode()[len(prefix):]: int(v) for k, v in zip(names, values, strict=True)}

    def marks(self, kind: str, run_id: str, node_id: str) -> list[tuple[str, int]]:
        """(worker id, attempt) of each execution that reached mark ``kind`` (started, done, ...)."""
        out = []
        for raw in self.fx.lrange(f"{kind}:{run_id}:{node_id}", 0, -1):
            worker, attempt = raw.decode().rsplit(" ", 1)
            out.append((worker, int(attempt)))
        return out

    def wait_marks(self, kind: str, run_id: str, node_id: str, count: int = 1,
                   timeout_s: float = 30.0) -> list[tuple[str, int]]:
        wait_until(lambda: len(self.marks(kind, run_id, node_id)) >= count, timeout_s,
                   f"{count} '{kind}' mark(s) of {node_id} in run {run_id}")
        return self.marks(kind, run_id, node_id)

    def open_gate(self, gate: str, worker_id: str | None = None) -> None:
        self.fx.set(f"gate:{gate}:{worker_id}" if worker_id else f"gate:{gate}", 1)

    @staticmethod
    def worker_index(worker_id: str) -> int:
        """``dev-worker-3`` -> 3 (the LocalStack's naming)."""
        prefix = "dev-worker-"
        assert worker_id.startswith(prefix), worker_id
        return int(worker_id[len(prefix):])

    # ---- runs ----
    def wait_runs(self, run_ids: Iterable[str], timeout_s: float = 40.0) -> None:
        """Wait until every run ended; tolerates services that are down or restarting meanwhile."""
        waiting = list(run_ids)
        deadline = time.monotonic() + timeout_s
        last: dict[str, str] = {}
        while waiting:
            try:
                for run_id in list(waiting):
                    info = self.client.get_run(run_id)
                    last[run_id] = status_name(info.status)
                    if info.status in ENDED_STATUSES:
                        waiting.remove(run_id)
            except GraflowError as exc:
                last["error"] = str(exc)
            if waiting and time.monotonic() > deadline:
                raise AssertionError(f"runs did not end within {timeout_s}s: {waiting}; last seen {last}")
            if waiting:
                time.sleep(0.1)

    def history(self, run_id: str) -> list[RunEvent]:
        return list(self.client.watch(run_id))

    def stored_results(self, run_id: str, node_ids: Iterable[str]) -> dict[str, rs_pb2.NodeResult]:
        stub = rs_grpc.ResultStoreStub(self._channel(self.stack.result_store_address))
        request = rs_pb2.GetResultsRequest(run_id=run_id, node_ids=sorted(node_ids))
        reply = stub.GetResults(request, timeout=10)
        return {r.node_id: r for r in reply.results}

    def dead_letters(self) -> list[messages_pb2.DeadLetter]:
        stub = coordinator_pb2_grpc.CoordinatorStub(self._channel(self.stack.coordinator_address))
        reply = stub.ListDeadLetters(coordinator_pb2.ListDeadLettersRequest(limit=1000), timeout=10)
        return list(reply.dead_letters)

    def _channel(self, address: str) -> grpc.Channel:
        if address not in self._channels:
            target, options = client_channel_args(address)  # a list when the stack has replicas
            self._channels[address] = grpc.insecure_channel(target, options=options)
        return self._channels[address]

    # ---- the two exactly-once assertions ----
    def assert_effects_once(self, run_id: str, spec: TaskSpec) -> None:
        """Every task body of the run recorded its side effect exactly once."""
        assert self.effects(run_id) == dict.fromkeys(task_node_ids(spec), 1)

    def assert_run_state_once(self, run_id: str, spec: TaskSpec, retries: Mapping[str, int] | None = None,
                              *, redelivered: Mapping[str, int] | None = None,
                              same_execution: bool = True) -> list[RunEvent]:
        """The run SUCCEEDED once; its history saw every node (tasks and groups) succeed exactly
        once and nothing fail; every task's stored result comes from the attempt whose success the
        history applied - and from the same execution (worker) unless ``same_execution`` is False (a
        delivery duplicated by hand runs the same attempt twice). Returns the history.

        Retries: exactly ``retries`` (node -> count, default none), except that a node in
        ``redelivered`` (node -> workers that died holding it) may also show up to that many
        more: an attempt lost with its worker may be redelivered as a new attempt, which the
        history records as a retry."""
        info = self.client.get_run(run_id)
        assert status_name(info.status) == "SUCCEEDED", (run_id, status_name(info.status), info.error)
        assert {n.node_id for n in info.nodes if node_state_name(n.state) != "SUCCEEDED"} == set()
        events = self.history(run_id)
        kinds = Counter(event_type_name(e.type) for e in events)
        assert kinds["RUN_SUCCEEDED"] == 1 and kinds["RUN_FAILED"] == kinds["RUN_CANCELED"] == 0, kinds
        assert kinds["NODE_FAILED"] == 0, kinds
        retried = Counter(e.node_id for e in events if e.type == RunEvent.TYPE_NODE_RETRYING)
        expected, lost = Counter(retries or {}), Counter(redelivered or {})
        unexpected = {n: c for n, c in retried.items() if not expected[n] <= c <= expected[n] + lost[n]}
        missing = {n: c for n, c in expected.items() if retried[n] < c}
        assert unexpected == missing == {}, (
            f"retries in run {run_id}: {dict(retried)}, expected {dict(expected)}"
        )
        succeeded = {e.node_id: e for e in events if e.type == RunEvent.TYPE_NODE_SUCCEEDED}
        times = Counter(e.node_id for e in events if e.type == RunEvent.TYPE_NODE_SUCCEEDED)
        twice = {node: n for node, n in times.items() if n > 1}
        assert twice == {}, f"nodes that succeeded more than once in run {run_id}: {twice}"
        assert {n.node_id for n in info.nodes} == set(succeeded)
        tasks = task_node_ids(spec)
        stored = self.stored_results(run_id, tasks)
        assert set(stored) == tasks
        for node_id in tasks:
            applied, result = succeeded[node_id], stored[node_id]
            if not same_execution:
                assert result.attempt == applied.attempt, (node_id, result.attempt, applied.attempt)
                continue
            assert (result.attempt, result.worker_id) == (applied.attempt, applied.worker_id), (
                f"{node_id}: the stored result is from attempt {result.attempt} on {result.worker_id}, "
                f"the history applied attempt {applied.attempt} from {applied.worker_id}"
            )
        return events

    # ---- diagnostics ----
    def log_tails(self, lines: int = 25) -> str:
        names = [*self.stack.servers, *(w.name for w in self.stack.workers), "redis"]
        parts = []
        for name in names:
            with contextlib.suppress(Exception):
                parts.append(f"----- {name} -----\n{self.stack.log_tail(name, lines)}")
        return "\n".join(parts)


def wait_until(
    predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.02
) -> None:
    """Poll ``predicate`` until it is truthy; AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


@contextlib.contextmanager
def chaos_stack(workers: int = 2, *, fsync: str = "everysec", env: dict[str, str] | None = None,
                worker_acl: bool = False, replicas: Mapping[str, int] | None = None,
                cluster_cells: int = 0) -> Iterator[Chaos]:
    """A stack (its own Redis with AOF ``fsync``) plus an observer Redis, stopped at the end.
    ``replicas``: processes per server (``LocalStack(replicas=...)``). ``cluster_cells``: the stack
    runs on a local Redis Cluster instead (``chaos.cluster``: 3 primaries, 3 replicas, AOF
    ``fsync``; a test may kill its nodes) with that many cells.

    ``worker_acl``: the workers log in to Redis as a user of their own, so a test can withdraw
    their right to commit (:func:`refuse_worker_commits`) while every other service works on.
    On failure, the tail of every process's log is printed (pytest shows it with the failure).
    """
    # One private directory (not /tmp/graflow-*) for both Redis data dirs and the logs.
    base = Path(tempfile.mkdtemp(prefix="gf-chaos-"))
    for sub in ("observer", "redis", "logs"):
        (base / sub).mkdir()
    observer = LocalRedis(directory=base / "observer").start()
    server = LocalRedis(directory=base / "redis", fsync=fsync)
    cluster = LocalRedisCluster(base / "cluster", fsync=fsync) if cluster_cells else None
    on_cluster = {"redis_cluster": cluster, "cells": cluster_cells} if cluster else {}
    try:
        if cluster is not None:
            cluster.start()
        else:
            server.start()
        stack_env = {
            "GRAFLOW_TEST_EFFECTS_URL": observer.url,
            "GRAFLOW_SCHEDULER_CLAIM_IDLE_MS": str(SCHEDULER_CLAIM_IDLE_MS),
            **LIVENESS,
            **(env or {}),
        }
        if worker_acl:
            with redis.Redis.from_url(server.url) as admin:
                admin.acl_setuser(WORKER_USER, enabled=True, passwords=[f"+{WORKER_PASSWORD}"],
                                  keys=["*"], channels=["*"], categories=["+@all"])
            stack_env["GRAFLOW_WORKER_REDIS_URL"] = (
                f"redis://{WORKER_USER}:{WORKER_PASSWORD}@127.0.0.1:{server.port}/0"
            )
        stack, _ = start_stack(workers, task_modules=TASK_MODULES, server=server, env=stack_env,
                               log_dir=base / "logs", replicas=replicas, **on_cluster)
    except BaseException:
        server.close()
        if cluster is not None:
            cluster.close()
        observer.close()
        shutil.rmtree(base, ignore_errors=True)
        raise
    chaos = Chaos(stack, None if cluster else server, observer, cluster)
    try:
        yield chaos
    except BaseException:
        sys.stderr.write(f"\nlogs of the chaos stack ({stack.log_dir}):\n{chaos.log_tails()}\n")
        raise
    finally:
        chaos.close()
        stack.stop()
        server.close()
        if cluster is not None:
            cluster.close()
        observer.close()
        if KEEP_LOGS:
            sys.stderr.write(f"\nchaos stack logs and Redis data kept in {base}\n")
        else:
            shutil.rmtree(base, ignore_errors=True)


def refuse_worker_commits(chaos: Chaos, refuse: bool) -> None:
    """Withdraw (or give back) the workers' right to append outcomes and acknowledge deliveries.
    Their other commands, and every other service, keep working."""
    with redis.Redis.from_url(chaos.server.url) as admin:
        admin.acl_setuser(WORKER_USER, enabled=True, categories=["+@all"],
                          commands=["-xadd", "-xack"] if refuse else [])


@pytest.fixture(scope="module")
def calm() -> Iterator[Chaos]:
    """One stack shared by the tests of a module whose fault leaves every process running."""
    with chaos_stack() as chaos:
        yield chaos
