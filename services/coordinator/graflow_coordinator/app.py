"""Assembly of the coordinator: ``create_app(settings, redis)`` wires it, ``start``/``stop`` run it
(as a process: ``graflow_runtime.service``, which checks Redis first).

Start-up: queue groups -> gRPC server -> health SERVING -> the retry timers (one per cell of the key
layout, each with its listener of the cell's gf:retry:wake) and liveness loops.
Shutdown runs it backwards: NOT_SERVING, end the workers' heartbeat streams (declaring nobody
dead: they reconnect to another replica or to this one's successor), stop the loops, stop the
server within the grace period (in-flight calls finish), close Redis.
"""

from __future__ import annotations

import asyncio
import functools

import redis.asyncio as aioredis
import structlog

from graflow_api.v1 import coordinator_pb2_grpc
from graflow_runtime import keys
from graflow_runtime.audit import AuditLog
from graflow_runtime.dispatch import Dispatcher
from graflow_runtime.fleet import FleetMetrics
from graflow_runtime.grpc_server import ServicerBinding, create_api_server
from graflow_runtime.queues import QueueGroups
from graflow_runtime.redis_client import connect
from graflow_runtime.version import __version__

from graflow_coordinator import fleet_metrics
from graflow_coordinator.deadletters import DeadLetters
from graflow_coordinator.heartbeats import HeartbeatStreams
from graflow_coordinator.liveness import LivenessLoop
from graflow_coordinator.reclaim import Reclaimer
from graflow_coordinator.retry_timer import RetryTimer, RetryWakeListener
from graflow_coordinator.service import SERVICE_NAME, CoordinatorServicer
from graflow_coordinator.settings import CoordinatorSettings
from graflow_coordinator.workers import WorkerRegistry

log = structlog.get_logger(__name__)

# Longest wait before a streamed heartbeat's lease renewal is written (with the others of the window).
RENEW_WINDOW_MS = 200
# CLIENT LIST name of the connection of the retry timer's wake-up listener.
RETRY_WAKE_CLIENT = "graflow-coordinator-retry-wake"


class CoordinatorApp:
    """The coordinator wired on its settings and a Redis client, which it owns (closed by ``stop``)."""

    def __init__(self, settings: CoordinatorSettings, redis: aioredis.Redis) -> None:
        s = self.settings = settings
        # Signs envelopes (Dispatch) and lost attempts' outcomes, verifies envelopes it reclaims and
        # dead letters it replays (docs/security.md, "Integrity on the bus").
        bus_keys = s.bus_keys()
        bus_keys.log_mode("coordinator")
        self.redis = redis
        self.groups = QueueGroups(redis)
        reclaimer = Reclaimer(redis, max_deliveries=s.max_deliveries, dead_letter_maxlen=s.dead_letter_maxlen,
                              bus_keys=bus_keys)
        registry = WorkerRegistry(
            redis, self.groups, reclaimer, lease_timeout_ms=s.lease_timeout_ms, default_queues=s.queues
        )
        self.retry_timers = [
            RetryTimer(redis, self.groups, max_sleep_ms=s.retry_timer_max_sleep_ms, cell=cell)
            for cell in keys.cells()
        ]
        # Each blocked on its cell's gf:retry:wake most of the time, on a connection of its own.
        self.wake_redis = [
            connect(s.redis_url, max_connections=1, client_name=RETRY_WAKE_CLIENT) for _ in self.retry_timers
        ]
        self.retry_wakes = [
            RetryWakeListener(client, timer)
            for client, timer in zip(self.wake_redis, self.retry_timers, strict=True)
        ]
        self.liveness = LivenessLoop(
            redis,
            registry,
            reclaimer,
            self.groups,
            lease_timeout_ms=s.lease_timeout_ms,
            startup_grace_ms=s.startup_grace_ms,
            check_interval_ms=s.liveness_check_ms,
            maintenance_interval_ms=s.queue_trim_interval_ms,
            queues=s.queues,
        )
        dispatcher = Dispatcher(redis, self.groups, record_ttl_s=s.dispatch_record_ttl_s, bus_keys=bus_keys)
        # Renewals of streamed heartbeats are written together, within a fraction of the interval.
        renew_window_ms = min(RENEW_WINDOW_MS, s.heartbeat_interval_ms // 4)
        self.heartbeat_streams = HeartbeatStreams(registry, self.liveness, renew_window_ms=renew_window_ms)
        audit = AuditLog(redis, service="coordinator", maxlen=s.audit_maxlen)
        servicer = CoordinatorServicer(
            redis,
            dispatcher,
            registry,
            DeadLetters(redis, self.groups, bus_keys=bus_keys),
            self.heartbeat_streams,
            audit,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            lease_timeout_ms=s.lease_timeout_ms,
        )
        binding = ServicerBinding(
            coordinator_pb2_grpc.add_CoordinatorServicer_to_server, servicer, SERVICE_NAME
        )
        # Fleet-wide gauges, measured by the one replica holding the lease (graflow_runtime.fleet).
        self.fleet_metrics = (
            FleetMetrics(
                redis,
                "coordinator",
                fleet_metrics.GAUGES,
                functools.partial(fleet_metrics.measure, redis, s.lease_timeout_ms),
                interval_s=s.fleet_metrics_interval_s,
            )
            if s.metrics_port
            else None
        )
        self.server = create_api_server(
            s.listen_address,
            [binding],
            name="coordinator",
            settings=s,
            audit=audit,
        )

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        s = self.settings
        await self.groups.ensure(s.queues)
        await self.server.start()
        log.info(
            "coordinator listening",
            version=__version__,
            port=self.server.port,
            address=s.listen_address,
            queues=s.queues,
        )
        for loop in (*self.retry_wakes, *self.retry_timers):
            loop.start()
        self.liveness.start()
        if self.fleet_metrics is not None:
            self.fleet_metrics.start()

    async def stop(self) -> None:
        grace_s = self.settings.shutdown_grace_s
        await self.server.set_serving(False)
        await self.heartbeat_streams.close(timeout_s=grace_s)
        # Together: a cell's listener must not start a blocking read while another cell's stops.
        retry_loops = (*self.retry_wakes, *self.retry_timers)
        await asyncio.gather(*(loop.stop(timeout_s=grace_s) for loop in retry_loops))
        await self.liveness.stop(timeout_s=grace_s)
        if self.fleet_metrics is not None:
            await self.fleet_metrics.stop(timeout_s=grace_s)
        await self.server.stop(grace_s)
        for client in self.wake_redis:
            await client.aclose()
        await self.redis.aclose()
        log.info("coordinator stopped")


def create_app(settings: CoordinatorSettings, redis: aioredis.Redis) -> CoordinatorApp:
    """Wire (not start) the coordinator; ``settings.listen_address`` with port 0 binds any free port."""
    return CoordinatorApp(settings, redis)
