"""cell_reader on a Redis Cluster (issue 10): a cell's blocking read and the CLIENT UNBLOCK that
interrupts it reach the cell's primary, and follow it when its replica takes over."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from graflow_runtime import keys
from graflow_runtime.local_redis import LocalRedisCluster

from graflow_worker.settings import WorkerSettings
from graflow_worker.worker import CellReader, cell_reader

CELLS = 4


@pytest.fixture
def four_cells_on_a_cluster() -> Iterator[None]:
    keys.configure(keys.Layout(cells=CELLS, cluster=True))
    yield
    keys.configure(keys.Layout())


async def _unblocks(clients: CellReader, lane: str) -> float:
    """Seconds a 10 s blocking read of ``lane`` lasted when unblocked after 0.2 s."""
    client_id = await clients.reader.client_id()

    async def unblock() -> None:
        await asyncio.sleep(0.2)
        assert await clients.control.client_unblock(client_id)

    unblocking = asyncio.create_task(unblock())
    started = time.monotonic()
    assert await clients.reader.xreadgroup(keys.WORKER_GROUP, "w", {lane: ">"}, block=10_000) == []
    await unblocking
    return time.monotonic() - started


async def test_each_cells_read_is_unblocked_on_its_primary_also_after_a_failover(
    four_cells_on_a_cluster: None, redis_cluster: LocalRedisCluster, redis_on_cluster: RedisCluster
) -> None:
    settings = WorkerSettings(
        redis_url=redis_cluster.url, redis_cluster=True, redis_cells=CELLS, task_modules=["any.module"]
    )
    readers = [cell_reader(settings, redis_on_cluster, cell) for cell in keys.cells()]
    lanes = [keys.queue_stream("default", cell) for cell in keys.cells()]
    assert len({redis_cluster.primary_of(lane).port for lane in lanes}) == 3  # cells on every primary
    try:
        for lane in lanes:
            await redis_on_cluster.xgroup_create(lane, keys.WORKER_GROUP, id="0", mkstream=True)
        for clients, lane in zip(readers, lanes, strict=True):
            assert await _unblocks(clients, lane) < 5
        old = redis_cluster.primary_of(lanes[1])
        node = redis_on_cluster.get_node_from_key(lanes[1])
        await redis_on_cluster.execute_command("WAIT", 1, 2000, target_nodes=node)
        redis_cluster.kill(old)
        redis_cluster.wait_for_failover(key_slot(lanes[1].encode()), old)
        deadline = time.monotonic() + 15
        while True:  # the worker's loop backs off on an unreachable Redis likewise
            try:
                assert await _unblocks(readers[1], lanes[1]) < 5
                break
            except ConnectionError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        redis_cluster.restart(old)
    finally:
        for clients in readers:
            await clients.reader.aclose()
            await clients.control.aclose()
