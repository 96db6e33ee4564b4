"""Fixtures of the benchmark helpers' tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis


@pytest.fixture
def bus(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the session's private Redis, emptied first."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()
