"""Fleet-wide gauges (queue lengths and lag, runs, live workers...), computed once per deployment.

A metric of a process describes its own work; a fleet-wide gauge describes Redis, the same for
every replica, so it is measured by ONE replica of a service: the one that holds the service's
short lease in Redis (``gf:metrics:lease:<service>``, ``SET NX PX`` taken or renewed by
``metrics_lease.lua``). :class:`FleetMetrics` tries to take or renew it every ``interval_s``; the
lease lives ``3 * interval_s``, so when its holder stops or dies another replica takes over within
that time. The holder exports the gauges it measured (and ``graflow_fleet_leader{service} 1``);
every other replica exports only ``graflow_fleet_leader{service} 0``, so sums over replicas in
PromQL need no ``max``. docs/operations.md, "Fleet-wide gauges".
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from graflow_runtime import keys, metrics
from graflow_runtime.loops import BackgroundLoop
from graflow_runtime.scripts import LuaScript

log = structlog.get_logger(__name__)

_LEASE = LuaScript.load("graflow_runtime", "metrics_lease.lua")


class Lease:
    """A short lease in Redis: at most one holder at a time, lost when not renewed within its TTL."""

    def __init__(self, redis: aioredis.Redis, key: str, *, ttl_ms: int, holder: str = "") -> None:
        self._redis = redis
        self.key = key
        self.ttl_ms = ttl_ms
        self.holder = holder or secrets.token_hex(8)

    async def hold(self) -> bool:
        """Take the lease if it is free, renew it if this holder has it; whether it is held now."""
        return bool(await _LEASE.run(self._redis, [self.key], [self.holder, self.ttl_ms]))


@dataclass(frozen=True)
class FleetGauge:
    """A fleet-wide metric: a gauge, or with ``counter`` a counter (its name without ``_total``)
    that counts from when the holder took the lease (a new holder starts again from 0, which
    ``rate()`` takes as a counter reset)."""

    name: str
    help: str
    labels: tuple[str, ...] = ()
    counter: bool = False


# A measurement: gauge name -> {label values -> value}.
Measurement = Mapping[str, Mapping[tuple[str, ...], float]]

LEADER = "graflow_fleet_leader"


class FleetMetrics(BackgroundLoop, Collector):
    """The fleet-wide ``gauges`` of ``service``, measured by ``measure(taken)`` while this replica
    holds the lease (``taken``: it has just taken it), exported through ``registry`` (a collector:
    the HTTP server's thread reads the last measurement, which the loop replaces whole)."""

    name = "fleet-metrics"

    def __init__(
        self,
        redis: aioredis.Redis,
        service: str,
        gauges: Sequence[FleetGauge],
        measure: Callable[[bool], Awaitable[Measurement]],
        *,
        interval_s: float = 5.0,
        registry: CollectorRegistry = metrics.REGISTRY,
        holder: str = "",
    ) -> None:
        super().__init__()
        self.service = service
        self._gauges = list(gauges)
        self._measure = measure
        self._interval_s = interval_s
        self._registry = registry
        self.lease = Lease(redis, keys.metrics_lease(service), ttl_ms=int(interval_s * 3000), holder=holder)
        self.leader = False
        self._last: Measurement = {}

    def start(self, *, delay_s: float = 0.0) -> None:
        self._registry.register(self)
        super().start(delay_s=delay_s)

    async def stop(self, timeout_s: float = 5.0) -> None:
        await super().stop(timeout_s)
        self._registry.unregister(self)

    async def step(self) -> float:
        await self.measure_once()
        return self._interval_s

    async def measure_once(self) -> None:
        """Take or renew the lease; measure when held, else forget the last measurement."""
        try:
            leader = await self.lease.hold()
        except BaseException:
            self.leader, self._last = False, {}
            raise
        if leader != self.leader:
            log.info("fleet metrics lease", service=self.service, held=leader)
        taken = leader and not self.leader
        self.leader = leader
        # ``taken``: the lease was just taken (counters start again from 0).
        self._last = await self._measure(taken) if leader else {}

    def collect(self) -> Iterator[Metric]:
        leader = GaugeMetricFamily(
            LEADER, "1 on the replica that holds its service's fleet-metrics lease and exports the "
            "fleet-wide gauges, 0 on the others.", labels=["service"]
        )
        leader.add_metric([self.service], 1.0 if self.leader else 0.0)
        yield leader
        last = self._last
        for gauge in self._gauges:
            samples = last.get(gauge.name)
            if samples is None:
                continue
            kind = CounterMetricFamily if gauge.counter else GaugeMetricFamily
            family = kind(gauge.name, gauge.help, labels=list(gauge.labels))
            for label_values, value in samples.items():
                family.add_metric(list(label_values), value)
            yield family
