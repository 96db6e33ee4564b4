"""connect(): the pooled asyncio client every service uses."""

from __future__ import annotations

import asyncio

from graflow_runtime.redis_client import connect


async def test_a_burst_beyond_the_pool_waits_for_a_connection_instead_of_failing(redis_url: str) -> None:
    client = connect(redis_url, max_connections=2)
    try:
        # 40 commands that each hold a connection for 20 ms, through 2 connections.
        replies = await asyncio.gather(*(client.blpop([f"absent-{i}"], timeout=0.02) for i in range(40)))
        assert replies == [None] * 40
        assert await client.incr("burst-counter") == 1
    finally:
        await client.aclose()
