"""A primary of the local Redis Cluster SIGKILLed: its replica takes over within seconds (the test
fixture's promise), and the engine's client, scripts and per-slot blocking readers follow it."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import MovedError

from graflow_runtime.local_redis import LocalRedisCluster
from graflow_runtime.redis_client import REDIS_UNAVAILABLE, SlotPrimary, connect
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
    reader = SlotPrimary(redis_on_cluster, stream)
    client = await reader.client()
    assert await client.xreadgroup("g", "c", {stream: ">"}, block=100) == []
    node = redis_on_cluster.get_node_from_key(stream)
    assert await redis_on_cluster.execute_command("WAIT", 1, 2000, target_nodes=node) == 1

    old = redis_cluster.primary_of(stream)
    redis_cluster.kill(old)
    try:
        # The script call is retried through the failover; the new primary never loaded the
        # script (Redis does not replicate its script cache): NOSCRIPT, loaded, run again.
        assert await INCR.run(redis_on_cluster, [counter], [1]) == 2

        # The reader's node is gone: it fails, asks the cluster again, and reads from the new
        # primary (a writer adds an entry there).
        deadline = time.monotonic() + 15
        while True:
            try:
                client = await reader.client()
                await redis_on_cluster.xadd(stream, {"n": "1"})
                reply = await client.xreadgroup("g", "c", {stream: ">"}, block=2000)
                break
            except (*REDIS_UNAVAILABLE, MovedError):
                assert time.monotonic() < deadline, "the reader did not find the new primary"
                await reader.failed()
                await asyncio.sleep(0.2)
        assert [fields for _, entries in reply for _, fields in entries][-1] == {b"n": b"1"}
        moved_to = redis_cluster.primary_of(stream)
        assert moved_to is not old
        direct = connect(moved_to.url, cluster=False)
        try:
            assert (await client.client_info())["laddr"] != ""  # a live connection
            assert int((await direct.info("server"))["tcp_port"]) == moved_to.port
        finally:
            await direct.aclose()
    finally:
        await reader.aclose()
        redis_cluster.restart(old)
