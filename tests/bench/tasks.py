"""Tasks the benchmark workers register (GRAFLOW_WORKER_TASK_MODULES=tests.bench.tasks)."""

from __future__ import annotations

import os
import time

import redis

from graflow import TaskContext, task

_marks: redis.Redis | None = None


@task
def start() -> int:
    return 0


@task
def unit(i: int) -> int:
    return i


@task
def total(**upstream: int) -> int:
    return sum(upstream.values())


@task
def ping() -> str:
    return "pong"


@task
def noop() -> None:
    """A step of the chain, group and many-runs measures: takes nothing, returns nothing."""


@task(inject_context=True)
def nap(ctx: TaskContext, seconds: float = 1.0) -> int:
    """Writes ``bench:running:<run>`` = <attempt>:<pid of this worker process> (on the Redis named
    by GRAFLOW_BENCH_REDIS_URL), then sleeps ``seconds``; returns the attempt (recovery.py)."""
    global _marks
    if _marks is None:
        _marks = redis.Redis.from_url(os.environ["GRAFLOW_BENCH_REDIS_URL"])
    _marks.set(f"bench:running:{ctx.run_id}", f"{ctx.attempt}:{os.getpid()}", ex=3600)
    time.sleep(seconds)
    return ctx.attempt
