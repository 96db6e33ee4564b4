"""A primary of the local Redis Cluster SIGKILLed: its replica takes over within seconds (the test
fixture's promise), and the engine's client, scripts and per-slot blocking readers (``home_key``)
follow it."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from graflow_runtime.local_redis import LocalRedisCluster
from graflow_runtime.redis_client import connect
from graflow_runtime.scripts import LuaScript

INCR = LuaScript("incr.lua", "return redis.call('INCRBY', KEYS[1], ARGV[1])")


async def test_a_killed_primary_is_replaced_by_its_replica_within_seconds(
    redis_cluster: LocalRedisCluster, redis_on_cluster: RedisCluster
) -> None:
    key = "gf:{c2.4}:meta"
    await redis_on_cluster.set(key, "kept")
    old = redis_cluster.primary_of(key)
    replicas = redis_cluster.replicas_of(old)
    assert len(replicas) == 1
    # Replication is asynchronous: wait until the replica has the write before killing.
    node = redis_on_cluster.get_node_from_key(key)
    assert await redis_on_cluster.execute_command("WAIT", 1, 2000, target_nodes=node) == 1

    started = time.monotonic()
    redis_cluster.kill(old)
    new = redis_cluster.wait_for_failover(key_slot(key.encode()), old, timeout_s=15)
    took = time.monotonic() - started

    assert new is replicas[0]
    assert took < 10, took
    assert await redis_on_cluster.get(key) == b"kept"  # the client followed the failover
    redis_cluster.restart(old)  # back as a replica of the new primary
    assert redis_cluster.replicas_of(new) == [old]


async def test_scripts_and_a_slots_blocking_reader_follow_a_failover(
    redis_cluster: LocalRedisCluster, redis_on_cluster: RedisCluster
) -> None:
    stream, counter = "gf:{c3.4}:q:lane", "gf:{c3.4}:count"
    await redis_on_cluster.xgroup_create(stream, "g", id="0", mkstream=True)
    assert await INCR.run(redis_on_cluster, [counter], [1]) == 1
    reader = connect(redis_cluster.url, cluster=True, max_connections=1, home_key=stream)
    control = connect(redis_cluster.url, cluster=True, max_connections=1, home_key=stream)
    old = redis_cluster.primary_of(stream)
    try:
        assert await reader.xreadgroup("g", "c", {stream: ">"}, block=100) == []
        assert await _port(reader) == old.port
        node = redis_on_cluster.get_node_from_key(stream)
        assert await redis_on_cluster.execute_command("WAIT", 1, 2000, target_nodes=node) == 1

        redis_cluster.kill(old)
        # The script call is retried through the failover; the new primary never loaded the
        # script (Redis does not replicate its script cache): NOSCRIPT, loaded, run again.
        assert await INCR.run(redis_on_cluster, [counter], [1]) == 2
        new = redis_cluster.primary_of(stream)
        assert new is not old

        # The reader's next read and its keyless commands reach the new primary by themselves.
        await redis_on_cluster.xadd(stream, {"n": "1"})
        reply = await reader.xreadgroup("g", "c", {stream: ">"}, block=2000)
        assert [fields for _, entries in reply for _, fields in entries][-1] == {b"n": b"1"}
        assert await _port(reader) == new.port
        client_id = await reader.client_id()

        async def unblock() -> bool:
            await asyncio.sleep(0.2)
            return bool(await control.client_unblock(client_id))

        unblocking = asyncio.create_task(unblock())
        assert await reader.xreadgroup("g", "c", {stream: ">"}, block=10_000) == []
        assert await unblocking
    finally:
        await reader.aclose()
        await control.aclose()
        redis_cluster.restart(old)


async def _port(client: RedisCluster) -> int:
    """The port of the node the client's keyless commands reach."""
    return int((await client.info("server"))["tcp_port"])
