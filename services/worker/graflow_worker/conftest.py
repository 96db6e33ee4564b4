"""Fixtures of the worker's own tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from graflow_runtime.testing.slots import (  # noqa: F401 - fixtures (cells_test.py)
    four_cells,
    one_slot_scripts,
)

from graflow_worker.testing.services import Stack
from graflow_worker.testing.tasks import PROBE


@pytest.fixture
async def stack(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[Stack]:
    """Real Redis, in-process coordinator and result-store doubles; workers started by the test."""
    PROBE.reset()
    async with Stack(redis, redis_url) as s:
        yield s
