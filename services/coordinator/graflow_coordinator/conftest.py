"""Fixtures of the coordinator's tests: real coordinators in-process on port 0, on the private
test Redis (``redis`` fixture: flushed database), reached through the generated stubs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from graflow_api.v1 import coordinator_pb2, coordinator_pb2_grpc, messages_pb2
from graflow_runtime import keys
from graflow_runtime.redis_client import connect
from graflow_runtime.testing.slots import (  # noqa: F401 - fixtures (cells_test.py)
    four_cells,
    one_slot_scripts,
)

from graflow_coordinator.app import CoordinatorApp, create_app
from graflow_coordinator.settings import CoordinatorSettings

StartCoordinator = Callable[..., Awaitable[CoordinatorApp]]


@pytest.fixture
def make_settings(redis_url: str) -> Callable[..., CoordinatorSettings]:
    def make(**overrides: Any) -> CoordinatorSettings:
        values: dict[str, Any] = {
            "redis_url": redis_url, "listen_address": "127.0.0.1:0", "shutdown_grace_s": 2.0,
            "startup_grace_ms": 0,
        }
        values.update(overrides)
        return CoordinatorSettings(**values)

    return make


@pytest.fixture
async def start_coordinator(
    redis: aioredis.Redis, make_settings: Callable[..., CoordinatorSettings]
) -> AsyncIterator[StartCoordinator]:
    """Start coordinators with the given setting overrides; all are stopped after the test."""
    apps: list[CoordinatorApp] = []

    async def start(**overrides: Any) -> CoordinatorApp:
        settings = make_settings(**overrides)
        app = create_app(settings, connect(settings.redis_url))
        apps.append(app)
        await app.start()
        return app

    yield start
    for app in reversed(apps):
        await app.stop()


@pytest.fixture
async def coordinator(start_coordinator: StartCoordinator) -> CoordinatorApp:
    return await start_coordinator()


@pytest.fixture
async def stub(coordinator: CoordinatorApp) -> AsyncIterator[coordinator_pb2_grpc.CoordinatorStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
        yield coordinator_pb2_grpc.CoordinatorStub(channel)


@pytest.fixture
async def open_stub() -> AsyncIterator[Callable[[CoordinatorApp], coordinator_pb2_grpc.CoordinatorStub]]:
    """Stubs for coordinators started with custom settings."""
    channels: list[grpc.aio.Channel] = []

    def open_(app: CoordinatorApp) -> coordinator_pb2_grpc.CoordinatorStub:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
        channels.append(channel)
        return coordinator_pb2_grpc.CoordinatorStub(channel)

    yield open_
    for channel in channels:
        await channel.close()


def envelope(
    node_id: str = "a",
    *,
    run_id: str = "run-1",
    attempt: int = 1,
    queue: str = "default",
    priority: int = 0,
    task_type: str = "fetch",
    lost_attempts: int = 0,
) -> messages_pb2.TaskEnvelope:
    return messages_pb2.TaskEnvelope(
        run_id=run_id,
        node_id=node_id,
        task_type=task_type,
        attempt=attempt,
        queue=queue,
        priority=priority,
        args_json=b"{}",
        lost_attempts=lost_attempts,
    )


def delivery(
    node_id: str = "a", *, delay_ms: int = 0, replaces_lost_attempt: bool = False, **fields: Any
) -> coordinator_pb2.Delivery:
    return coordinator_pb2.Delivery(
        envelope=envelope(node_id, **fields), delay_ms=delay_ms, replaces_lost_attempt=replaces_lost_attempt
    )


async def stream_envelopes(
    redis: aioredis.Redis, queue: str = "default", *, high: bool = False
) -> list[messages_pb2.TaskEnvelope]:
    """The envelopes in ``queue``'s normal lane, or its high lane."""
    entries = await redis.xrange(keys.queue_high_stream(queue) if high else keys.queue_stream(queue))
    return [messages_pb2.TaskEnvelope.FromString(fields[keys.ENVELOPE_FIELD]) for _, fields in entries]


async def read_outcomes(redis: aioredis.Redis) -> list[messages_pb2.TaskOutcome]:
    """Every outcome appended to ``gf:outcomes`` so far, oldest first."""
    entries = await redis.xrange(keys.OUTCOMES_STREAM)
    return [messages_pb2.TaskOutcome.FromString(fields[keys.OUTCOME_FIELD]) for _, fields in entries]


async def eventually(
    condition: Callable[[], Awaitable[Any]], *, timeout_s: float = 10.0, what: str = "condition"
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)
