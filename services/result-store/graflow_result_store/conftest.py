"""Fixtures of the result-store's own tests: the service in-process, against a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis

from graflow_api.v1 import result_store_pb2_grpc
from graflow_runtime.redis_client import connect
from graflow_runtime.testing.slots import (  # noqa: F401 - fixtures (cells_test.py)
    four_cells,
    one_slot_scripts,
)

from graflow_result_store.app import ResultStoreApp, create_app
from graflow_result_store.settings import ResultStoreSettings

# Run ids of the tests (the result-store takes only run ids the scheduler could have made).
RUN_1, RUN_2, RUN_3, RUN_4 = (f"{n:026d}" for n in range(1, 5))


async def start_app(redis_url: str, **overrides: object) -> ResultStoreApp:
    settings = ResultStoreSettings(listen_address="127.0.0.1:0", redis_url=redis_url, **overrides)
    app = create_app(settings, connect(redis_url))
    await app.start()
    return app


@pytest.fixture
async def stub(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[result_store_pb2_grpc.ResultStoreStub]:
    """A served result-store (retention 1 h, values up to 1 KiB) and a stub of it."""
    app = await start_app(redis_url, retention_s=3600, max_value_bytes=1024)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        yield result_store_pb2_grpc.ResultStoreStub(channel)
    finally:
        await channel.close()
        await app.stop(0)
