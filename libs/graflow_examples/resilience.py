"""Failure handling examples: a task that succeeds on its second attempt, one that can't succeed,
and one slow enough to be canceled.

``retrying``: ``flaky_fetch`` (fails attempt 1 with a ConnectionError, retried after 0.1 s) >> ``summarize``.
``failing``: ``fetch_config`` >> ``validate`` (raises NonRetryableError: the run fails at once).
``slow``: ``nap`` (sleeps 3 s) >> ``summarize_nap``.
"""

from __future__ import annotations

import time
from typing import Any

from graflow import NonRetryableError, RetryPolicy, TaskContext, Workflow, task, workflow


@task(inject_context=True, retry=RetryPolicy(max_attempts=3, initial_interval=0.1, jitter=0))
def flaky_fetch(ctx: TaskContext) -> dict[str, Any]:
    if ctx.attempt < 2:
        raise ConnectionError(f"upstream timed out on attempt {ctx.attempt}")
    return {"rows": 3, "attempt": ctx.attempt}


@task
def summarize(flaky_fetch: dict[str, Any]) -> str:
    return f"{flaky_fetch['rows']} rows after {flaky_fetch['attempt']} attempts"


@task
def fetch_config() -> dict[str, Any]:
    return {"threshold": -1}


@task
def validate(fetch_config: dict[str, Any]) -> dict[str, Any]:
    if fetch_config["threshold"] < 0:
        raise NonRetryableError(f"threshold must be >= 0, got {fetch_config['threshold']}")
    return fetch_config


@task
def nap(seconds: float = 3.0) -> float:
    time.sleep(seconds)
    return seconds


@task
def summarize_nap(nap: float) -> str:
    return f"slept {nap} s"


def retrying() -> Workflow:
    with workflow("retrying") as wf:
        flaky_fetch >> summarize
    return wf


def failing() -> Workflow:
    with workflow("failing") as wf:
        fetch_config >> validate
    return wf


def slow(seconds: float = 3.0) -> Workflow:
    with workflow("slow") as wf:
        nap(task_id="nap", seconds=seconds) >> summarize_nap
    return wf
