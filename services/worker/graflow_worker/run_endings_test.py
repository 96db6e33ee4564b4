"""The ended-runs watcher against a real redis-server: while a task runs it follows gf:ended from
its tail at start-up, hands every ended run to the registry within the 0.5 s bound, and survives a
lost connection without missing entries appended meanwhile; while nothing runs it reads nothing."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

from graflow_runtime import keys
from graflow_runtime.redis_client import connect

from graflow_worker.cancellation import Cancellations
from graflow_worker.run_endings import POLL_S, RunEndings


async def append_end(redis, run_id: str, status: str = "FAILED") -> None:  # type: ignore[no-untyped-def]
    await redis.xadd(keys.RUNS_ENDED, {keys.RUN_ENDED_RUN_FIELD: run_id, keys.RUN_ENDED_STATUS_FIELD: status})


async def wait_until(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def watching(redis_url: str, registry: Cancellations) -> AsyncIterator[RunEndings]:
    """A started watcher on a connection of its own, stopped at the end."""
    own = connect(redis_url, max_connections=1)
    endings = RunEndings(own, registry)
    await endings.start()
    stop = asyncio.Event()
    loop_task = asyncio.create_task(endings.run(stop))
    try:
        yield endings
    finally:
        stop.set()
        await asyncio.wait_for(loop_task, 5)
        await own.aclose()


async def test_ends_after_the_start_reach_running_tasks_within_a_read_and_earlier_ones_are_not_read(
    redis, redis_url
):
    await append_end(redis, "ended-before")
    registry = Cancellations()
    async with watching(redis_url, registry) as endings:
        event: threading.Event = registry.event("run-1")  # a running task's cancel event
        await asyncio.sleep(0.05)
        began = asyncio.get_running_loop().time()
        await append_end(redis, "run-1", "SUCCEEDED")
        await wait_until(event.is_set)
        # Read every POLL_S while a task runs: within the bound.
        assert asyncio.get_running_loop().time() - began < 0.5
        assert registry.is_canceled("run-1")
        assert not registry.is_canceled("ended-before")
        assert endings.received == 1


async def test_a_lost_connection_is_retried_from_the_last_entry_read(redis, redis_url):
    registry = Cancellations()
    running = registry.event("run-x")  # noqa: F841 - a running task's event: the watcher reads
    async with watching(redis_url, registry) as endings:
        await append_end(redis, "run-a")
        await wait_until(lambda: registry.is_canceled("run-a"))
        # Kill the watcher's connection and append while it is away.
        watcher_ids = [c["id"] for c in await redis.client_list() if c.get("cmd") in ("xread", "xrevrange")]
        assert watcher_ids
        for client_id in watcher_ids:
            await redis.client_kill_filter(_id=client_id)
        await append_end(redis, "run-b")
        await append_end(redis, "run-c")
        await wait_until(lambda: registry.is_canceled("run-b") and registry.is_canceled("run-c"))
        assert endings.received == 3


async def test_nothing_is_read_while_no_task_runs_and_the_first_running_task_gets_the_ends(redis, redis_url):
    registry = Cancellations()
    async with watching(redis_url, registry) as endings:
        await append_end(redis, "run-idle")
        await asyncio.sleep(3 * POLL_S)
        # No task runs: a run's end costs this worker nothing (the consumer's queue read brings it).
        assert endings.received == 0
        event = registry.event("run-idle")  # a task of that run starts
        began = asyncio.get_running_loop().time()
        await wait_until(event.is_set)
        assert asyncio.get_running_loop().time() - began < 0.5
        assert endings.received == 1
