"""connect(..., cluster=True): what the engine does with Redis, on a real local Redis Cluster
(graflow_testing's ``redis_cluster``: 3 primaries, 3 replicas)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    ClusterDownError,
    CrossSlotTransactionError,
    RedisClusterException,
    RedisClusterUnreachableError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from graflow_runtime import keys, redis_acl
from graflow_runtime.errors import ConfigurationError
from graflow_runtime.local_redis import LocalRedisCluster, free_port
from graflow_runtime.redis_client import (
    REDIS_UNAVAILABLE,
    check_durability,
    check_layout,
    connect,
)
from graflow_runtime.scripts import LuaScript

INCR = LuaScript("incr.lua", "return redis.call('INCRBY', KEYS[1], ARGV[1])")
# Keys of one cell: one slot whatever the suffix.
CELL = "gf:{c0.4}"


def _key_per_primary(cluster: LocalRedisCluster) -> list[str]:
    """One key on each primary."""
    found: dict[int, str] = {}
    for i in range(1000):
        key = f"k{i}"
        found.setdefault(cluster.primary_of(key).port, key)
    assert len(found) == 3
    return list(found.values())


async def test_the_setting_chooses_the_cluster_client_and_commands_reach_each_slots_primary(
    redis_cluster: LocalRedisCluster, redis_on_cluster: RedisCluster
) -> None:
    client = connect(redis_cluster.url, cluster=True)
    try:
        assert isinstance(client, RedisCluster)
        for key in _key_per_primary(redis_cluster):
            await client.set(key, "v")
            owner = redis_cluster.primary_of(key)
            direct = connect(owner.url, cluster=False)
            try:
                assert await direct.get(key) == b"v"  # on the primary that owns its slot
            finally:
                await direct.aclose()
    finally:
        await client.aclose()


async def test_a_url_naming_several_nodes_reaches_the_cluster_through_any_of_them(
    redis_cluster: LocalRedisCluster, redis_on_cluster: RedisCluster
) -> None:
    down = f"127.0.0.1:{free_port()}"  # nothing listens there: the next node named is asked
    live = ",".join(url.split("//")[1].split("/")[0] for url in redis_cluster.urls[:2])
    client = connect(f"redis://{down},{live}/0", cluster=True)
    try:
        await client.set("seeded", "1")
        assert await redis_on_cluster.get("seeded") == b"1"
    finally:
        await client.aclose()


async def test_the_layout_chooses_the_client_when_not_told(redis_cluster: LocalRedisCluster) -> None:
    keys.configure(keys.Layout(cells=4, cluster=True))
    try:
        client = connect(redis_cluster.url)
    finally:
        keys.configure(keys.Layout())
    try:
        assert isinstance(client, RedisCluster)
    finally:
        await client.aclose()


async def test_scripts_run_alone_and_pipelined_across_every_primary_and_reload_after_a_flush(
    redis_cluster: LocalRedisCluster, redis_on_cluster: RedisCluster
) -> None:
    spread = _key_per_primary(redis_cluster)
    assert await INCR.run(redis_on_cluster, [spread[0]], [5]) == 5
    calls = [([key], [i + 1]) for i, key in enumerate(spread)] * 2
    assert await INCR.run_many(redis_on_cluster, calls) == [6, 2, 3, 7, 4, 6]
    # One primary forgets its scripts (as a replica promoted at failover never had them).
    node = redis_on_cluster.get_node_from_key(spread[1])
    await redis_on_cluster.execute_command("SCRIPT FLUSH", target_nodes=node)
    assert await INCR.run_many(redis_on_cluster, calls) == [8, 6, 9, 9, 8, 12]
    await redis_on_cluster.execute_command("SCRIPT FLUSH", target_nodes=RedisCluster.PRIMARIES)
    assert await INCR.run(redis_on_cluster, [spread[2]], [1]) == 13


async def test_a_transaction_on_keys_of_one_slot_is_atomic_and_one_spanning_slots_is_refused(
    redis_on_cluster: RedisCluster,
) -> None:
    async with redis_on_cluster.pipeline(transaction=True) as pipe:
        pipe.incr(f"{CELL}:a")
        pipe.xadd(f"{CELL}:stream", {"f": "1"})
        pipe.incr(f"{CELL}:a")
        replies = await pipe.execute()
    assert replies[0] == 1 and replies[2] == 2
    assert await redis_on_cluster.xlen(f"{CELL}:stream") == 1
    assert key_slot(b"gf:{c1.4}:a") != key_slot(f"{CELL}:a".encode())
    with pytest.raises(CrossSlotTransactionError):
        async with redis_on_cluster.pipeline(transaction=True) as pipe:
            pipe.incr(f"{CELL}:a")
            pipe.incr("gf:{c1.4}:a")
            await pipe.execute()
    assert await redis_on_cluster.get(f"{CELL}:a") == b"2"  # nothing of it ran
    assert await redis_on_cluster.get("gf:{c1.4}:a") is None


async def test_blocking_group_reads_on_several_streams_of_one_slot_and_plain_reads(
    redis_on_cluster: RedisCluster,
) -> None:
    streams = [f"{CELL}:q:a", f"{CELL}:q:b"]
    for stream in streams:
        await redis_on_cluster.xgroup_create(stream, "g", id="0", mkstream=True)

    async def later() -> None:
        await asyncio.sleep(0.2)
        await redis_on_cluster.xadd(streams[1], {"n": "1"})

    writer = asyncio.create_task(later())
    started = time.monotonic()
    reply = await redis_on_cluster.xreadgroup("g", "c", {s: ">" for s in streams}, count=10, block=5000)
    await writer
    assert time.monotonic() - started < 4
    assert [(name.decode(), [fields for _, fields in entries]) for name, entries in reply] == [
        (streams[1], [{b"n": b"1"}])
    ]
    plain = await redis_on_cluster.xread({s: "0" for s in streams})
    assert [name.decode() for name, _ in plain] == [streams[1]]


async def test_stream_reads_find_their_slot_without_asking_a_node(redis_on_cluster: RedisCluster) -> None:
    """redis-py asks one fixed node for the keys of XREAD and XREADGROUP (COMMAND GETKEYS); when
    that node had died, every read failed before redis-py's retries."""
    stream, other = f"{CELL}:q:keys", f"{CELL}:q:other"
    for name in (stream, other):
        await redis_on_cluster.xgroup_create(name, "g", id="0", mkstream=True)
    await redis_on_cluster.xadd(stream, {"n": "1"})
    redis_on_cluster.commands_parser.node = ClusterNode("127.0.0.1", free_port())  # nothing there
    assert [name for name, _ in await redis_on_cluster.xread({stream: "0"})] == [stream.encode()]
    reply = await redis_on_cluster.xreadgroup("g", "c", {stream: ">", other: ">"}, block=10)
    assert [name for name, _ in reply] == [stream.encode()]
    with pytest.raises(RedisClusterException, match="same key slot"):
        await redis_on_cluster.xread({stream: "0", "gf:{c1.4}:q:keys": "0"})


async def test_a_blocking_read_on_a_slots_primary_is_unblocked_by_its_client_id(
    redis_cluster: LocalRedisCluster, redis_on_cluster: RedisCluster
) -> None:
    stream = f"{CELL}:q:lane"
    await redis_on_cluster.xgroup_create(stream, "g", id="0", mkstream=True)
    reader = connect(redis_cluster.url, cluster=True, max_connections=1, home_key=stream)
    control = connect(redis_cluster.url, cluster=True, max_connections=1, home_key=stream)
    try:
        client_id = await reader.client_id()  # keyless: on the stream's primary, the one connection
        assert redis_cluster.primary_of(stream) is not redis_cluster.primary_of("gf:{c2.4}:x")

        async def unblock() -> bool:
            await asyncio.sleep(0.2)
            return bool(await control.client_unblock(client_id))

        unblocking = asyncio.create_task(unblock())
        started = time.monotonic()
        assert await reader.xreadgroup("g", "c", {stream: ">"}, block=10_000) == []
        assert time.monotonic() - started < 5
        assert await unblocking
    finally:
        await reader.aclose()
        await control.aclose()


async def test_durability_is_checked_on_every_primary(redis_on_cluster: RedisCluster) -> None:
    assert await check_durability(redis_on_cluster) == []
    node = redis_on_cluster.get_primaries()[1]
    await redis_on_cluster.config_set("maxmemory-policy", "allkeys-lru", target_nodes=node)
    try:
        problems = await check_durability(redis_on_cluster)
    finally:
        await redis_on_cluster.config_set("maxmemory-policy", "noeviction", target_nodes=node)
    assert problems == [
        f"maxmemory-policy is 'allkeys-lru' (node {node.name}); must be 'noeviction' or Redis may "
        "drop run state"
    ]


async def test_the_layout_is_recorded_and_checked_on_a_cluster(redis_on_cluster: RedisCluster) -> None:
    await check_layout(redis_on_cluster, keys.Layout(cells=4, cluster=True))
    await check_layout(redis_on_cluster, keys.Layout(cells=4, cluster=True))
    with pytest.raises(ConfigurationError, match="cells=4 tagged=1"):
        await check_layout(redis_on_cluster, keys.Layout(cells=8, cluster=True))


async def test_commands_beyond_the_pool_wait_for_a_connection_then_fail_as_unavailable(
    redis_cluster_url: str,
) -> None:
    client = connect(redis_cluster_url, cluster=True, max_connections=2)
    try:
        replies = await asyncio.gather(*(client.blpop([f"absent:{i}"], timeout=0.2) for i in range(10)))
        assert replies == [None] * 10
    finally:
        await client.aclose()
    client = connect(redis_cluster_url, cluster=True, max_connections=1, pool_timeout_s=0.2)
    try:
        holder = asyncio.create_task(client.blpop(["absent"], timeout=1))
        await asyncio.sleep(0.1)
        with pytest.raises(RedisConnectionError, match="no free Redis connection within 0.2s"):
            await client.get("other")
        assert await holder is None
        assert await client.get("other") is None  # the connection is free again
    finally:
        await client.aclose()


async def test_a_pipeline_redirected_by_moved_runs_on_a_client_of_one_connection(
    redis_cluster: LocalRedisCluster, redis_on_cluster: RedisCluster
) -> None:
    """redis-py runs a pipeline's command that met MOVED again as a command, inside the pipeline's
    place in flight: it must not wait for a second place (with one, it would wait on itself)."""
    key = f"{CELL}:moved"
    client = connect(redis_cluster.url, cluster=True, max_connections=1, pool_timeout_s=2)
    try:
        await client.set(key, "1")
        slot = key_slot(key.encode())
        owner = client.get_node_from_key(key)
        wrong = next(node for node in client.get_primaries() if node.name != owner.name)
        client.nodes_manager.slots_cache[slot] = [wrong]  # a stale slot map: the next call meets MOVED
        started = time.monotonic()
        async with client.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            assert await pipe.execute() == [2]
        assert time.monotonic() - started < 1.5
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("unix:///tmp/redis.sock", "redis:// or rediss://, not unix://"),
        ("redis://127.0.0.1:7000/0?ssl_ca_certs=/tmp/ca.pem", "need the rediss:// scheme"),
        ("rediss://127.0.0.1:7000/0?ssl_ca_certs=/nonexistent/ca.pem", "its TLS files cannot be used"),
        ("redis://127.0.0.1:7000/1", "'db' must be 0"),
        ("redis://127.0.0.1:7000,127.0.0.1/0", "must be host:port, not '127.0.0.1'"),
    ],
)
def test_unusable_cluster_urls_are_refused_at_once(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        connect(url, cluster=True)


def test_the_errors_of_a_failover_count_as_redis_unavailable() -> None:
    failover = (ClusterDownError("CLUSTERDOWN"), TryAgainError("TRYAGAIN"), RedisClusterUnreachableError("x"))
    for error in failover:
        assert isinstance(error, REDIS_UNAVAILABLE)
    assert not isinstance(ResponseError("WRONGTYPE"), REDIS_UNAVAILABLE)


@pytest.fixture(scope="module")
def acl_cluster() -> Iterator[LocalRedisCluster]:
    """A cluster whose nodes have the services' ACL users loaded (replicas log in as ``default``)."""
    with LocalRedisCluster(users=redis_acl.generate_passwords()) as cluster:
        yield cluster


@pytest.mark.parametrize("user", ["scheduler", "coordinator", "result-store", "worker"])
async def test_each_service_user_starts_a_cluster_client_and_passes_the_start_up_checks(
    acl_cluster: LocalRedisCluster, user: str
) -> None:
    """A cluster client's start-up reads the slot map (CLUSTER SLOTS) and the command table
    (COMMAND): both granted to every service user (redis_acl.CONNECTION_COMMANDS)."""
    client = connect(acl_cluster.url_for(user), cluster=True)
    try:
        assert await check_durability(client) == []  # through INFO: CONFIG is refused to them
        await check_layout(client, keys.Layout(cells=4, cluster=True))
    finally:
        await client.aclose()


async def test_the_workers_user_blocks_on_its_lane_and_unblocks_itself_on_a_cluster(
    acl_cluster: LocalRedisCluster,
) -> None:
    lane = keys.queue_stream("default")
    admin = connect(acl_cluster.url, cluster=True)
    reader = connect(acl_cluster.url_for("worker"), cluster=True, max_connections=1, home_key=lane)
    control = connect(acl_cluster.url_for("worker"), cluster=True, max_connections=1, home_key=lane)
    try:
        await admin.xgroup_create(lane, keys.WORKER_GROUP, id="0", mkstream=True)
        client_id = await reader.client_id()
        unblocking = asyncio.create_task(_unblock_later(control, client_id))
        assert await reader.xreadgroup(keys.WORKER_GROUP, "w", {lane: ">"}, block=10_000) == []
        assert await unblocking
    finally:
        for client in (admin, reader, control):
            await client.aclose()


async def _unblock_later(control: RedisCluster, client_id: int) -> bool:
    await asyncio.sleep(0.2)
    return bool(await control.client_unblock(client_id))
