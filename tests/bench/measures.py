"""The Graflow side of each measure of ``throughput.py``, driven through the SDK against a stack.

Every workflow but the fan-out is submitted once before it is timed (warm-up: the graph is stored,
connections and caches are warm); the warm-up runs count in the measure's cost (``tasks``). The
fan-out is one run, its graph stored on the way, as in the figures of earlier issues.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce

from graflow import parallel, workflow
from graflow.devstack import LocalStack
from graflow_api.v1 import workflow_pb2
from tests.bench.cost import median, percentile
from tests.bench.tasks import noop, ping, start, total, unit
from tests.bench.threads import run_together, shares

RESULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Sizes:
    latency_runs: int = 200
    chain_steps: int = 100
    fanout: int = 10_000
    group_members: int = 1_000
    many_runs: int = 1_000
    many_steps: int = 3
    many_threads: int = 8
    repeats: int = 3  # timed runs of the chain and of the group (median)
    idle_s: int = 5


@dataclass(frozen=True)
class Outcome:
    figures: dict[str, float]
    tasks: int  # task nodes run, warm-up included: the unit of the measure's cost (idle: seconds)


def latency(stack: LocalStack, sizes: Sizes) -> Outcome:
    """One-task workflows one after the other: submit -> result in the client, ms, the way a user
    waits for a result (``submit_and_wait``: one call)."""
    with workflow("ping") as wf:
        wf.add(ping)
    spec = wf.spec()
    samples = []
    warm_up = 10
    with stack.client() as client:
        for _ in range(warm_up):
            client.submit_and_wait(spec, timeout=30)
        for _ in range(sizes.latency_runs):
            began = time.perf_counter()
            value = client.submit_and_wait(spec, timeout=30)
            samples.append((time.perf_counter() - began) * 1000)
            assert value == "pong", value
    return Outcome({"p50_ms": median(samples), "p99_ms": percentile(samples, 0.99)},
                   warm_up + sizes.latency_runs)


def _timed_runs(stack: LocalStack, spec: workflow_pb2.WorkflowSpec, repeats: int) -> list[float]:
    """Seconds from submit to result of ``spec``, ``repeats`` times after one warm-up run."""
    samples = []
    with stack.client(timeout=120) as client:
        client.submit_and_wait(spec, timeout=RESULT_TIMEOUT_S)
        for _ in range(repeats):
            began = time.perf_counter()
            client.submit_and_wait(spec, timeout=RESULT_TIMEOUT_S)
            samples.append(time.perf_counter() - began)
    return samples


def chain(stack: LocalStack, sizes: Sizes) -> Outcome:
    """``a1 >> a2 >> ... >> aN`` of no-op tasks: seconds (median of the timed runs)."""
    with workflow("chain") as wf:
        reduce(lambda left, right: left >> right,
               [noop(task_id=f"a{i}") for i in range(1, sizes.chain_steps + 1)])
    samples = _timed_runs(stack, wf.spec(), sizes.repeats)
    return Outcome({"seconds": median(samples)}, (sizes.repeats + 1) * sizes.chain_steps)


def group_join(stack: LocalStack, sizes: Sizes) -> Outcome:
    """``start >> parallel(N no-ops) >> join``: seconds (median of the timed runs)."""
    with workflow("group") as wf:
        (noop(task_id="start")
         >> parallel(*[noop(task_id=f"m{i}") for i in range(sizes.group_members)])
         >> noop(task_id="join"))
    samples = _timed_runs(stack, wf.spec(), sizes.repeats)
    return Outcome({"seconds": median(samples)}, (sizes.repeats + 1) * (sizes.group_members + 2))


def fanout(stack: LocalStack, sizes: Sizes) -> Outcome:
    """``start >> parallel(N units) >> total`` (the join sums N results): tasks/s, one run."""
    n = sizes.fanout
    with workflow("fanout") as wf:
        start >> parallel(*[unit(task_id=f"u{i}", i=i) for i in range(n)]) >> total
    spec = wf.spec()
    with stack.client(timeout=120) as client:
        began = time.perf_counter()
        value = client.submit(spec).result(timeout=RESULT_TIMEOUT_S)
        elapsed = time.perf_counter() - began
    assert value == sum(range(n)), value
    return Outcome({"tasks_per_s": (n + 2) / elapsed, "seconds": elapsed}, n + 2)


def many_runs(stack: LocalStack, sizes: Sizes) -> Outcome:
    """``runs`` runs of a chain of ``steps`` no-ops, submitted at once from ``threads`` threads
    (each its own client), each thread then waiting for its runs' results: runs/s from the first
    submit to the last result, and the ``SubmitRun`` latency while they run (ms)."""
    with workflow("small") as wf:
        reduce(lambda left, right: left >> right,
               [noop(task_id=f"s{i}") for i in range(1, sizes.many_steps + 1)])
    spec = wf.spec()
    threads = sizes.many_threads
    share = shares(sizes.many_runs, threads)
    submits: list[list[float]] = [[] for _ in range(threads)]
    done_at = [0.0] * threads
    clients = [stack.client(timeout=120) for _ in range(threads)]
    for client in clients:  # warm-up: each client's channel connected, the graph stored
        client.submit(spec).result(timeout=30)

    def drive(index: int) -> None:
        runs = []
        for _ in range(share[index]):
            began = time.perf_counter()
            runs.append(clients[index].submit(spec))
            submits[index].append((time.perf_counter() - began) * 1000)
        for run in runs:
            run.result(timeout=RESULT_TIMEOUT_S)
        done_at[index] = time.perf_counter()

    try:
        released = run_together(drive, threads)
    finally:
        for client in clients:
            client.close()
    elapsed = max(done_at) - released
    all_submits = [s for per_thread in submits for s in per_thread]
    figures = {
        "runs_per_s": sizes.many_runs / elapsed,
        "seconds": elapsed,
        "submit_p50_ms": median(all_submits),
        "submit_p99_ms": percentile(all_submits, 0.99),
    }
    return Outcome(figures, (threads + sizes.many_runs) * sizes.many_steps)


def idle(stack: LocalStack, sizes: Sizes) -> Outcome:
    """Nothing submitted for ``idle_s`` seconds: the stack's background cost (heartbeats, liveness
    checks, timers, blocking reads that time out). Its unit is a second, not a task."""
    time.sleep(sizes.idle_s)
    return Outcome({"seconds": sizes.idle_s}, sizes.idle_s)


MEASURES: dict[str, Callable[[LocalStack, Sizes], Outcome]] = {
    "idle": idle,
    "latency": latency,
    "chain": chain,
    "fanout": fanout,
    "group": group_join,
    "many": many_runs,
}
