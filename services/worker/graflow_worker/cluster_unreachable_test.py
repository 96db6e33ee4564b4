"""The worker's read loop when its Redis Cluster client finds no node at all (issue 10).

redis-py's cluster client then raises ``RedisClusterUnreachableError`` (and, for a slot without a
node, ``SlotNotCoveredError``): ``RedisClusterException`` subclasses, not ``RedisError``. It does so
during a failover too, when the topology refresh that a connection error asks for reaches no node
(graflow_runtime.redis_client.REDIS_UNAVAILABLE names them). A read batch whose check of ended runs
failed so was not given up: its deliveries stayed held by the worker forever (its slots taken, and
its resync skipping them as held), pending in Redis under a live worker that the coordinator never
reclaims, so their run never ended."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from graflow_runtime import keys, runids
from graflow_runtime.local_redis import LocalRedisCluster

from graflow_worker.settings import WorkerSettings
from graflow_worker.testing.services import TASKS_MODULE, envelope
from graflow_worker.worker import create_worker

CELLS = 4


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalRedisCluster]:
    """A cluster of this test's own (it kills every node) with the layout of four cells."""
    keys.configure(keys.Layout(cells=CELLS, cluster=True))
    cluster = LocalRedisCluster(tmp_path / "cluster").start()
    try:
        yield cluster
    finally:
        cluster.close()
        keys.configure(keys.Layout())


def _settings(cluster: LocalRedisCluster) -> WorkerSettings:
    return WorkerSettings(
        redis_url=cluster.url, redis_cluster=True, redis_cells=CELLS, task_modules=[TASKS_MODULE],
        coordinator_address="127.0.0.1:1", result_store_address="127.0.0.1:1", shutdown_grace_s=0.5,
    )


async def test_a_batch_whose_ended_runs_check_finds_no_cluster_node_is_given_up_for_the_resync(
    cluster: LocalRedisCluster,
) -> None:
    settings = _settings(cluster)
    worker = create_worker(settings)
    try:
        run_id = runids.new_run_id(cell=1)
        consumer = worker.consumers[1]
        lane = keys.queue_stream("default", 1)
        # The client knows the topology before the nodes die (as during a failover).
        assert await worker._redis.hget(keys.run_meta(run_id), keys.RUN_ENDED_AT_FIELD) is None
        for node in cluster.running():
            cluster.kill(node)
        delivery = envelope(run_id, "a", "add", args={"a": 1})
        # A read's entries (a resync's: no ended-runs cursor, so the check asks Redis).
        consumer._accept([(lane, b"1-0", {keys.ENVELOPE_FIELD: delivery.SerializeToString()})])
        assert consumer.held == 1
        # Given up: the slot is free again and the entry is no longer held, so the next resync
        # takes it up again from the pending list once Redis is back.
        await asyncio.wait_for(consumer.wait_drained(), 30)
        assert consumer.held == 0
        assert worker.intake.free == settings.concurrency
    finally:
        await worker.stop()


async def test_a_cells_read_loop_backs_off_while_no_cluster_node_is_reachable(
    cluster: LocalRedisCluster,
) -> None:
    worker = create_worker(_settings(cluster))
    consumer = worker.consumers[2]
    try:
        for node in cluster.running():
            cluster.kill(node)
        reading = asyncio.create_task(consumer.run())
        done, _ = await asyncio.wait({reading}, timeout=5)
        assert done == set(), reading.exception()  # it retries, it does not end
        consumer.stop()
        await asyncio.wait_for(reading, 10)
    finally:
        await worker.stop()
