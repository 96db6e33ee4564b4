"""connect(): the services' asyncio Redis client, against a real redis-server."""

from __future__ import annotations

import asyncio
import time

import pytest

from graflow_runtime.redis_client import REDIS_UNAVAILABLE, connect, redacted


async def test_a_burst_beyond_the_pool_waits_for_connections_instead_of_failing(redis_url: str) -> None:
    client = connect(redis_url, max_connections=2)
    try:
        # Each BLPOP holds its connection for 0.2 s: ten at once need five times the pool.
        replies = await asyncio.gather(*(client.blpop([f"absent:{i}"], timeout=0.2) for i in range(10)))
        assert replies == [None] * 10
    finally:
        await client.aclose()


async def test_a_command_that_gets_no_connection_within_the_pool_timeout_fails_as_unavailable(
    redis_url: str,
) -> None:
    client = connect(redis_url, max_connections=1, pool_timeout_s=0.2)
    try:
        holder = asyncio.create_task(client.blpop(["absent"], timeout=2))
        await asyncio.sleep(0.1)  # the BLPOP has the only connection
        started = time.monotonic()
        with pytest.raises(REDIS_UNAVAILABLE, match="No connection available"):
            await client.ping()
        assert time.monotonic() - started < 1.5  # the pool timeout, not the BLPOP's 2 s
        assert await holder is None
    finally:
        await client.aclose()


def test_redis_passwords_are_redacted_in_logs():
    assert redacted("redis://user:pw@host:6379/0") == "redis://user:***@host:6379/0"
    assert redacted("redis://host:6379/0") == "redis://host:6379/0"
    assert redacted("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert redacted("redis://user:pw@host:x6379/0") == "redis://user:***@host:x6379/0"  # bad port
    assert redacted("redis://user:p@w@[::1]:6379/0") == "redis://user:***@[::1]:6379/0"
    assert redacted("redis://host/0?db=1&Password=pw") == "redis://host/0?db=1&Password=***"
    assert redacted("unix:///tmp/r.sock?password=pw") == "unix:///tmp/r.sock?password=***"
