"""Tasks the benchmark workers register (GRAFLOW_WORKER_TASK_MODULES=tests.bench.tasks)."""

from __future__ import annotations

from graflow import task


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
