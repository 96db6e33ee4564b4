"""LocalRedis: a private, durable redis-server that survives restarts with its data."""

from __future__ import annotations

import socket
from pathlib import Path

import redis as sync_redis

from graflow_runtime.local_redis import LocalRedis, free_port
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


def test_free_ports_come_from_below_the_ephemeral_range_and_are_bindable() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(10_000 <= port < low for port in ports), ports
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
