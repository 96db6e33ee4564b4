"""Tasks of the soak benchmark (GRAFLOW_WORKER_TASK_MODULES=tests.bench.soak_tasks).

Every execution of a task body is counted (``HINCRBY soak:fx:<run> <node> 1``) on the observer
Redis named by ``GRAFLOW_SOAK_EFFECTS_URL``, so the benchmark can tell at-least-once re-runs of a
body (a worker killed mid-task) from duplicated effects on run state.
"""

from __future__ import annotations

import os
import time

import redis

from graflow import TaskContext, task

_client: redis.Redis | None = None


def executed(ctx: TaskContext) -> None:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["GRAFLOW_SOAK_EFFECTS_URL"])
    _client.hincrby(f"soak:fx:{ctx.run_id}", ctx.node_id, 1)


@task(inject_context=True)
def soak_start(ctx: TaskContext) -> int:
    executed(ctx)
    return 0


@task(inject_context=True)
def soak_unit(ctx: TaskContext, i: int, ms: float = 0.0) -> int:
    executed(ctx)
    if ms:
        time.sleep(ms / 1000)
    return i


@task(inject_context=True)
def soak_total(ctx: TaskContext, **upstream: int) -> int:
    executed(ctx)
    return sum(v for v in upstream.values() if isinstance(v, int))
