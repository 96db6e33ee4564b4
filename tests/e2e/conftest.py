"""A real local stack per test module: private redis-server, the four services as processes."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from graflow import Client
from graflow.devstack import LocalStack
from graflow_runtime.local_redis import LocalRedis

TASKS = "tests.e2e.tasks"
KEEP_LOGS = bool(os.environ.get("GRAFLOW_TEST_KEEP_LOGS"))
# GRAFLOW_TEST_SIGNING=1 runs every stack with a bus signing key (LocalStack(signing=True)), so that
# any e2e module can be run signed: ./pants test --test-extra-env-vars="+['GRAFLOW_TEST_SIGNING']"
# tests/e2e/delivery_test.py. forgery_test.py always signs.
SIGNING = bool(os.environ.get("GRAFLOW_TEST_SIGNING"))


def start_stack(
    workers: int = 2,
    *,
    task_modules: Sequence[str] = (TASKS,),
    server: LocalRedis | None = None,
    fsync: str = "everysec",
    **kwargs: object,
) -> tuple[LocalStack, LocalRedis]:
    """Start the stack on ``server`` (a new private redis-server with ``fsync`` when None).

    Tasks record their effects on the stack's Redis unless ``env`` names another
    ``GRAFLOW_TEST_EFFECTS_URL``. The caller stops the stack and closes the server. With
    ``redis_cluster`` (``LocalStack``'s) the stack runs on a Redis Cluster and ``server`` holds only
    the effects (the tasks' plain client could not write to a cluster).
    """
    server = server or LocalRedis(fsync=fsync).start()
    env = {"GRAFLOW_TEST_EFFECTS_URL": server.url, **kwargs.pop("env", {})}  # type: ignore[dict-item]
    kwargs.setdefault("signing", SIGNING)
    on = {} if kwargs.get("redis_cluster") else {"redis": server}
    stack = LocalStack(workers=workers, task_modules=list(task_modules), env=env, **on, **kwargs)  # type: ignore[arg-type]
    try:
        stack.start()
    except BaseException:
        stack.stop(keep_logs=True)
        server.close()
        raise
    return stack, server


@contextmanager
def module_stack(request: pytest.FixtureRequest, workers: int = 2, **kwargs: object) -> Iterator[LocalStack]:
    """``start_stack`` for a module-scoped fixture. At the end the stack is stopped; its logs are
    kept, and their directory printed, when a test of the module failed or GRAFLOW_TEST_KEEP_LOGS
    is set."""
    failed_before = request.session.testsfailed
    stack, server = start_stack(workers, **kwargs)  # type: ignore[arg-type]
    try:
        yield stack
    finally:
        keep = KEEP_LOGS or request.session.testsfailed > failed_before
        stack.stop(keep_logs=keep)
        server.close()
        if keep:
            sys.__stderr__.write(f"\nlogs of the stack of {request.node.name} kept in {stack.log_dir}\n")


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    with module_stack(request) as stack:
        yield stack


@pytest.fixture
def client(stack: LocalStack) -> Iterator[Client]:
    with stack.client(timeout=30) as c:
        yield c


def effects_url(stack: LocalStack) -> str:
    """The Redis where the stack's tasks record their starts and effects (``start_stack``'s
    ``server``: the stack's own Redis, or beside a Redis Cluster)."""
    return stack._env("worker")["GRAFLOW_TEST_EFFECTS_URL"]


@pytest.fixture
def fx(stack: LocalStack) -> Iterator[redis.Redis]:
    """The Redis where the tasks record their starts and effects."""
    conn = redis.Redis.from_url(effects_url(stack))
    yield conn
    conn.close()


@pytest.fixture
def effects(stack: LocalStack) -> Iterator[Callable[[str], dict[str, int]]]:
    """effects(run_id) -> {node_id: times its side effect happened}."""
    conn = redis.Redis.from_url(effects_url(stack))

    def counts(run_id: str) -> dict[str, int]:
        prefix = f"effects:{run_id}:"
        keys = list(conn.scan_iter(match=f"{prefix}*", count=1000))
        values = conn.mget(keys) if keys else []
        return {k.decode()[len(prefix):]: int(v) for k, v in zip(keys, values, strict=True)}

    yield counts
    conn.close()


def wait_for(predicate: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def started(fx: redis.Redis, run_id: str, node_id: str) -> dict[int, int]:
    """attempt -> pid of the worker process that started it."""
    prefix = f"started:{run_id}:{node_id}:"
    names = list(fx.scan_iter(match=f"{prefix}*"))
    return {int(n.decode()[len(prefix) :]): int(fx.get(n)) for n in names}


def log_records(stack: LocalStack, service: str) -> list[dict[str, Any]]:
    """The JSON log lines of one process of the stack."""
    records = []
    for line in stack.log_path(service).read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
