"""Filling streams for tests of their caps."""

from __future__ import annotations

import redis.asyncio as aioredis


async def fill(redis: aioredis.Redis, stream: str, count: int, *, chunk: int = 10_000) -> None:
    """Append ``count`` small filler entries to ``stream``, pipelined by ``chunk``."""
    for start in range(0, count, chunk):
        async with redis.pipeline(transaction=False) as pipe:
            for _ in range(min(chunk, count - start)):
                pipe.xadd(stream, {b"filler": b"1"})
            await pipe.execute()
