"""Fixtures of the scheduler's tests: run-state stores on the real Redis of the session
(``redis_url`` / ``redis`` from graflow_testing.plugin), the result-store's test double on a real
gRPC server, a started scheduler on a free port, and (graflow_runtime.testing.slots) a layout of
four cells with the check that every script call stays in one slot."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from graflow_api.v1 import scheduler_pb2_grpc
from graflow_runtime.redis_client import connect

# The tests with four cells (cells_test.py): the layout, and the check that scripts stay in one slot.
from graflow_runtime.testing.slots import four_cells, one_slot_scripts  # noqa: F401 - fixtures

from graflow_scheduler.app import SchedulerApp, create_app
from graflow_scheduler.state.reader import RunReader
from graflow_scheduler.state.store import RunStore
from graflow_scheduler.testing.app import app_client, scheduler_settings
from graflow_scheduler.testing.doubles import RecordingResultStore, serve_result_store


@pytest.fixture
async def store(redis: aioredis.Redis) -> RunStore:
    run_store = RunStore(redis, retention_s=3600)
    await run_store.load_scripts()
    return run_store


@pytest.fixture
def reader(redis: aioredis.Redis) -> RunReader:
    return RunReader(redis)


@dataclass
class Downstreams:
    result_store: RecordingResultStore
    address: str


@pytest.fixture
async def downstreams() -> AsyncIterator[Downstreams]:
    result_store = RecordingResultStore()
    server, port = await serve_result_store(result_store)
    try:
        yield Downstreams(result_store, f"127.0.0.1:{port}")
    finally:
        await server.stop(None)


AppFactory = Callable[..., Awaitable[SchedulerApp]]


@pytest.fixture
async def make_app(
    redis: aioredis.Redis, redis_url: str, downstreams: Downstreams
) -> AsyncIterator[AppFactory]:
    """Start schedulers with setting overrides; all are stopped at the end of the test."""
    started: list[SchedulerApp] = []

    async def make(**overrides: object) -> SchedulerApp:
        url = str(overrides.pop("redis_url", redis_url))
        scheduler = create_app(scheduler_settings(url, downstreams.address, **overrides), connect(url))
        await scheduler.start()
        started.append(scheduler)
        return scheduler

    try:
        yield make
    finally:
        for scheduler in reversed(started):
            await scheduler.stop()


@pytest.fixture
async def app(make_app: AppFactory) -> SchedulerApp:
    return await make_app()


@pytest.fixture
async def client(app: SchedulerApp) -> AsyncIterator[scheduler_pb2_grpc.SchedulerStub]:
    async with app_client(app) as stub:
        yield stub
