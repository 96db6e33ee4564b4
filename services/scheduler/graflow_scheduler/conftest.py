"""Fixtures of the scheduler's tests: run-state stores on the real Redis of the session
(``redis_url`` / ``redis`` from graflow_testing.plugin), downstream test doubles on a real gRPC
server, and a started scheduler on a free port."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
import redis.asyncio as aioredis

from graflow_api.v1 import scheduler_pb2_grpc

from graflow_scheduler.app import SchedulerApp, create_app
from graflow_scheduler.queries import RunReader
from graflow_scheduler.settings import SchedulerSettings
from graflow_scheduler.state import RunStore
from graflow_scheduler.testkit import RecordingCoordinator, RecordingResultStore, serve_downstreams


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
    coordinator: RecordingCoordinator
    result_store: RecordingResultStore
    address: str


@pytest.fixture
async def downstreams() -> AsyncIterator[Downstreams]:
    coordinator, result_store = RecordingCoordinator(), RecordingResultStore()
    server, port = await serve_downstreams(coordinator, result_store)
    try:
        yield Downstreams(coordinator, result_store, f"127.0.0.1:{port}")
    finally:
        await server.stop(None)


def scheduler_settings(redis_url: str, downstream_address: str, **overrides: object) -> SchedulerSettings:
    values: dict[str, object] = {
        "redis_url": redis_url,
        "listen_address": "127.0.0.1:0",
        "coordinator_address": downstream_address,
        "result_store_address": downstream_address,
        "consumer_name": "test-scheduler",
        "outcome_block_ms": 50,
        "sweep_interval_s": 3600.0,
        "claim_idle_ms": 60_000,
        "watch_block_ms": 200,
        "shutdown_grace_s": 1.0,
        "rpc_timeout_s": 2.0,
        "breaker_fail_max": 1000,
        "breaker_reset_s": 0.1,
    }
    values.update(overrides)
    return SchedulerSettings(**values)


AppFactory = Callable[..., Awaitable[SchedulerApp]]


@pytest.fixture
async def make_app(
    redis: aioredis.Redis, redis_url: str, downstreams: Downstreams
) -> AsyncIterator[AppFactory]:
    """Start schedulers with setting overrides; all are stopped at the end of the test."""
    started: list[SchedulerApp] = []

    async def make(**overrides: object) -> SchedulerApp:
        url = str(overrides.pop("redis_url", redis_url))
        scheduler = create_app(scheduler_settings(url, downstreams.address, **overrides))
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


@contextlib.asynccontextmanager
async def app_client(app: SchedulerApp) -> AsyncIterator[scheduler_pb2_grpc.SchedulerStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield scheduler_pb2_grpc.SchedulerStub(channel)


@pytest.fixture
async def client(app: SchedulerApp) -> AsyncIterator[scheduler_pb2_grpc.SchedulerStub]:
    async with app_client(app) as stub:
        yield stub
