"""The fleet-metrics lease on a real Redis: of two replicas exactly one exports the fleet-wide
gauges; when it stops renewing, the other takes over once the lease expired."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest

from graflow_runtime import keys
from graflow_runtime.fleet import FleetGauge, FleetMetrics, Measurement

GAUGES = (FleetGauge("graflow_test_queue_lag", "test", ("queue",)),)


def replica(
    redis: aioredis.Redis, holder: str, measured: list[str]
) -> tuple[FleetMetrics, CollectorRegistry]:
    registry = CollectorRegistry()

    async def measure(taken: bool) -> Measurement:
        measured.append(holder)
        return {"graflow_test_queue_lag": {("default",): 7.0}}

    fleet = FleetMetrics(
        redis, "coordinator", GAUGES, measure, interval_s=0.1, registry=registry, holder=holder
    )
    return fleet, registry


def exported(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


async def test_of_two_replicas_only_the_lease_holder_measures_and_exports(redis: aioredis.Redis) -> None:
    measured: list[str] = []
    a, registry_a = replica(redis, "a", measured)
    b, registry_b = replica(redis, "b", measured)
    registry_a.register(a)
    registry_b.register(b)

    for _ in range(3):
        await a.measure_once()
        await b.measure_once()

    assert (a.leader, b.leader) == (True, False)
    assert measured == ["a", "a", "a"]
    assert await redis.get(keys.metrics_lease("coordinator")) == b"a"
    assert 0 < await redis.pttl(keys.metrics_lease("coordinator")) <= 300
    text_a, text_b = exported(registry_a), exported(registry_b)
    assert 'graflow_test_queue_lag{queue="default"} 7.0' in text_a
    assert 'graflow_fleet_leader{service="coordinator"} 1.0' in text_a
    assert "graflow_test_queue_lag{" not in text_b
    assert 'graflow_fleet_leader{service="coordinator"} 0.0' in text_b


async def test_the_other_replica_takes_over_once_the_holder_stops_renewing(redis: aioredis.Redis) -> None:
    measured: list[str] = []
    a, _ = replica(redis, "a", measured)
    b, registry_b = replica(redis, "b", measured)
    await a.measure_once()
    await b.measure_once()
    assert not b.leader

    # a stops renewing (stopped or dead): its lease (3 intervals, 300 ms) expires.
    await asyncio.sleep(0.4)
    await b.measure_once()

    assert b.leader
    assert 'graflow_test_queue_lag{queue="default"} 7.0' in exported_with(b, registry_b)
    await a.measure_once()
    assert not a.leader


def exported_with(fleet: FleetMetrics, registry: CollectorRegistry) -> str:
    registry.register(fleet)
    return exported(registry)


async def test_the_loop_registers_its_collector_while_it_runs(redis: aioredis.Redis) -> None:
    measured: list[str] = []
    a, registry = replica(redis, "a", measured)
    a.start()
    try:
        for _ in range(50):
            if measured:
                break
            await asyncio.sleep(0.02)
        assert 'graflow_fleet_leader{service="coordinator"} 1.0' in exported(registry)
    finally:
        await a.stop()
    assert "graflow_fleet_leader" not in exported(registry)
