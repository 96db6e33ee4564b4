"""LocalRedis: a private, durable redis-server that survives restarts with its data."""

from __future__ import annotations

import redis as sync_redis

from graflow_runtime.local_redis import LocalRedis
from graflow_runtime.redis_client import check_durability, connect


def test_restart_keeps_port_and_data() -> None:
    with LocalRedis() as server:
        directory = server.directory
        client = sync_redis.Redis.from_url(server.url)
        client.set("k", "v")
        client.close()
        port = server.port

        server.restart(kill=True)  # appendfsync always: nothing acknowledged is lost

        assert server.port == port
        client = sync_redis.Redis.from_url(server.url)
        assert client.get("k") == b"v"
        client.close()
    assert not directory.exists()


async def test_local_redis_passes_the_durability_check() -> None:
    with LocalRedis() as server:
        client = connect(server.url)
        try:
            assert await check_durability(client) == []
        finally:
            await client.aclose()
