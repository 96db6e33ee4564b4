"""Task functions the end-to-end tests' workers register (GRAFLOW_WORKER_TASK_MODULES=tests.e2e.tasks).

Each task records its side effect in Redis (``INCR effects:<run>:<node>`` on the Redis named by
``GRAFLOW_TEST_EFFECTS_URL``), so tests can assert that every node's effect happened exactly once.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import redis

from graflow import NonRetryableError, RetryPolicy, TaskContext, task

_client: redis.Redis | None = None


def effects() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["GRAFLOW_TEST_EFFECTS_URL"])
    return _client


def record(ctx: TaskContext) -> None:
    effects().incr(f"effects:{ctx.run_id}:{ctx.node_id}")


@task(inject_context=True)
def source(ctx: TaskContext, value: int = 1) -> int:
    record(ctx)
    return value


@task(inject_context=True)
def add_one(ctx: TaskContext, source: int) -> int:
    record(ctx)
    return source + 1


@task(inject_context=True)
def double(ctx: TaskContext, add_one: int) -> int:
    record(ctx)
    return add_one * 2


@task(inject_context=True)
def left(ctx: TaskContext, source: int) -> int:
    record(ctx)
    return source + 10


@task(inject_context=True)
async def right(ctx: TaskContext, source: int) -> int:
    record(ctx)
    await asyncio.sleep(0)
    return source + 100


@task(inject_context=True)
def join(ctx: TaskContext, left: int, right: int) -> dict[str, int]:
    record(ctx)
    return {"left": left, "right": right, "sum": left + right}


@task(inject_context=True)
def item(ctx: TaskContext, i: int) -> int:
    record(ctx)
    return i


@task(inject_context=True)
def collect(ctx: TaskContext, **upstream: int) -> dict[str, int]:
    record(ctx)
    return {"count": len(upstream), "total": sum(upstream.values())}


@task(inject_context=True)
def echo(ctx: TaskContext, payload: Any) -> Any:
    record(ctx)
    return {"echo": payload, "node": ctx.node_id}


@task(inject_context=True)
def explode(ctx: TaskContext, message: str = "boom") -> None:
    record(ctx)
    raise ValueError(message)


@task(inject_context=True, retry=RetryPolicy(max_attempts=3, initial_interval=0.05, jitter=0))
def flaky(ctx: TaskContext, fail_times: int = 2) -> int:
    """Fails its first ``fail_times`` attempts, then returns the attempt number."""
    record(ctx)
    if ctx.attempt <= fail_times:
        raise ConnectionError(f"transient failure on attempt {ctx.attempt}")
    return ctx.attempt


@task(inject_context=True, retry=RetryPolicy(max_attempts=5, initial_interval=0.05))
def refuse(ctx: TaskContext) -> None:
    record(ctx)
    raise NonRetryableError("bad input, retrying won't help")


@task(inject_context=True)
def slow(ctx: TaskContext, seconds: float = 0.5) -> float:
    record(ctx)
    time.sleep(seconds)
    return seconds
