"""Assembly of the scheduler: ``create_app(settings, redis)`` wires it, ``start``/``stop`` run it
(as a process: ``graflow_runtime.service``, which checks Redis first).

Start-up: run scripts loaded, the outcome groups (one per cell), gRPC server -> health SERVING ->
a recovery sweep pass (dispatching what a previous process left READY) -> the outcome consumers,
the periodic sweep, the wait timer and, with a webhook, the feedback notifier. Shutdown runs it
backwards: NOT_SERVING, stop the loops (the current batch finishes), stop the server within the
grace period, close the result-store channel and Redis.

The scheduler enqueues the deliveries of the nodes it makes READY itself (graflow_runtime.dispatch,
on its own Redis client): it calls no coordinator.
"""

from __future__ import annotations

import redis.asyncio as aioredis
import structlog

from graflow_api.v1 import result_store_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from graflow_runtime import keys
from graflow_runtime.audit import AuditLog
from graflow_runtime.dispatch import Dispatcher
from graflow_runtime.fleet import FleetMetrics
from graflow_runtime.grpc_client import Downstream, open_channel
from graflow_runtime.grpc_server import ServicerBinding, create_api_server
from graflow_runtime.queues import QueueGroups
from graflow_runtime.redis_client import connect
from graflow_runtime.tls import channel_credentials
from graflow_runtime.version import __version__

from graflow_scheduler import fleet_metrics
from graflow_scheduler.api.ends import RunEnds
from graflow_scheduler.api.run_results import RunResults
from graflow_scheduler.api.servicer import SchedulerServicer
from graflow_scheduler.downstream.plan_cache import PlanCache, RunGraphs
from graflow_scheduler.graph.compiler import Limits
from graflow_scheduler.notify.notifier import FeedbackNotifier, WebhookConfig
from graflow_scheduler.outcomes.apply import OutcomeBatches
from graflow_scheduler.outcomes.consumer import ConsumerConfig, OutcomeConsumer
from graflow_scheduler.outcomes.stream import OutcomeStream
from graflow_scheduler.recovery.keepalive import ResultsKeepAlive
from graflow_scheduler.recovery.sweep import RecoverySweep
from graflow_scheduler.settings import SchedulerSettings
from graflow_scheduler.state.dynamic_nodes import DynamicNodes
from graflow_scheduler.state.reader import RunReader
from graflow_scheduler.state.store import RunStore
from graflow_scheduler.state.workflows import WorkflowRegistry
from graflow_scheduler.waits.children import ChildRuns
from graflow_scheduler.waits.feedback import FeedbackRequests
from graflow_scheduler.waits.parking import Parking
from graflow_scheduler.waits.resume import ResumedNodes
from graflow_scheduler.waits.timer import WaitTimer

log = structlog.get_logger(__name__)

# CLIENT LIST name of the connections of the process's readers of the ended-runs streams.
RUN_ENDS_CLIENT = "graflow-scheduler-run-ends"
SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name


def _downstream(name: str, settings: SchedulerSettings) -> Downstream:
    return Downstream(
        name,
        timeout_s=settings.rpc_timeout_s,
        fail_max=settings.breaker_fail_max,
        reset_s=settings.breaker_reset_s,
    )


class SchedulerApp:
    """The scheduler wired on its settings and a Redis client, which it owns (closed by ``stop``).
    ``WatchRun`` reads through a client of its own (``watch_redis``, ``WATCH_MAX_CONNECTIONS``
    connections): each watcher of all events holds a connection while it blocks. The callers
    waiting for a run's end share one reader of ``gf:ended`` per cell (``run_ends``, on
    ``ends_redis``). One outcome consumer per cell (``consumers``)."""

    def __init__(self, settings: SchedulerSettings, redis: aioredis.Redis) -> None:
        s = self.settings = settings
        # Signs envelopes (and a wait's timeout outcome), verifies outcomes (docs/security.md).
        bus_keys = s.bus_keys()
        bus_keys.log_mode("scheduler")
        self.redis = redis
        self.watch_redis = connect(s.redis_url, max_connections=s.watch_max_connections)
        self.result_store_channel = open_channel(s.result_store_address, s.auth_token, channel_credentials(s))
        # A run's dispatch record expires with its other keys, a retention period after the last
        # dispatch.
        dispatcher = Dispatcher(redis, QueueGroups(redis), record_ttl_s=s.retention_s, bus_keys=bus_keys)
        result_store_stub = result_store_pb2_grpc.ResultStoreStub(self.result_store_channel)
        result_store = _downstream("result-store", s)  # one breaker for every call to it
        plans = PlanCache(
            result_store_stub, result_store, capacity=s.plan_cache_size, refresh_s=s.results_keepalive_s
        )
        # With a webhook, each feedback request recorded is also appended for the notifier.
        webhook = WebhookConfig.from_settings(s)
        self.store = RunStore(
            redis, retention_s=s.retention_s, bus_keys=bus_keys, notify_feedback=webhook is not None
        )
        reader = RunReader(redis)
        graphs = RunGraphs(reader)
        limits = Limits(max_nodes=s.max_nodes, max_args_bytes=s.max_args_bytes)
        dynamic = DynamicNodes(redis)
        resumed = ResumedNodes(redis, plans, graphs, dispatcher, dynamic)
        feedback = FeedbackRequests(self.store, resumed)
        children = ChildRuns(self.store, resumed)
        self.wait_timer = WaitTimer(redis, feedback, children, interval_s=s.wait_timer_interval_s)
        self.notifier = FeedbackNotifier(redis, feedback, webhook) if webhook is not None else None
        # The readers of the cells' ended-runs streams for the process's waiters (one per cell),
        # each on a connection of its own.
        self.ends_redis = connect(s.redis_url, max_connections=len(keys.cells()), client_name=RUN_ENDS_CLIENT)
        self.run_ends = RunEnds(self.ends_redis, block_ms=s.watch_block_ms)
        self.servicer = SchedulerServicer(
            self.store,
            reader,
            RunReader(self.watch_redis),
            plans,
            graphs,
            dispatcher,
            feedback,
            children,
            RunResults(reader, self.run_ends),
            WorkflowRegistry(redis),
            limits=limits,
            watch_block_ms=s.watch_block_ms,
        )
        consumer_config = ConsumerConfig(
            batch=s.outcome_batch,
            block_ms=s.outcome_block_ms,
            max_deliveries=s.outcome_max_deliveries,
            claim_idle_ms=s.claim_idle_ms,
            trim_interval_s=s.sweep_interval_s,
            stats_log_interval_s=s.stats_log_interval_s,
        )
        # One consumer per cell, on its cell's outcome stream (a blocking read stays in one slot).
        self.consumers = [
            OutcomeConsumer(
                OutcomeBatches(
                    OutcomeStream(redis, s.consumer_name, cell),
                    self.store,
                    graphs,
                    plans,
                    dispatcher,
                    dynamic=dynamic,
                    limits=limits,
                    parking=Parking(redis),
                    children=children,
                    bus_keys=bus_keys,
                ),
                consumer_config,
            )
            for cell in keys.cells()
        ]
        keepalive = ResultsKeepAlive(redis, result_store_stub, result_store, interval_s=s.results_keepalive_s)
        self.sweep = RecoverySweep(
            reader,
            plans,
            dispatcher,
            interval_s=s.sweep_interval_s,
            retention_s=s.retention_s,
            dynamic=dynamic,
            keepalive=keepalive,
        )
        binding = ServicerBinding(
            scheduler_pb2_grpc.add_SchedulerServicer_to_server, self.servicer, SERVICE_NAME
        )
        # Fleet-wide gauges, measured by the one replica holding the lease (graflow_runtime.fleet).
        self.fleet_metrics = (
            FleetMetrics(
                redis,
                "scheduler",
                fleet_metrics.GAUGES,
                fleet_metrics.FleetMeasure(redis),
                interval_s=s.fleet_metrics_interval_s,
            )
            if s.metrics_port
            else None
        )
        self.server = create_api_server(
            s.listen_address,
            [binding],
            name="scheduler",
            settings=s,
            audit=AuditLog(redis, service="scheduler", maxlen=s.audit_maxlen),
        )

    @property
    def consumer(self) -> OutcomeConsumer:
        """The outcome consumer of cell 0 (the only one in the default layout)."""
        return self.consumers[0]

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        await self.store.load_scripts()
        for consumer in self.consumers:
            await consumer.stream.ensure_group()
        await self.run_ends.start_reading()  # before any call can wait for a run's end
        await self.server.start()
        await self.sweep.sweep_safely()  # what a previous process left READY
        for consumer in self.consumers:
            consumer.start()
        self.sweep.start(delay_s=self.sweep.interval_s)
        self.wait_timer.start()
        if self.notifier is not None:
            await self.notifier.start()
        if self.fleet_metrics is not None:
            self.fleet_metrics.start()
        log.info(
            "scheduler listening",
            version=__version__,
            port=self.port,
            address=self.settings.listen_address,
            consumer=self.settings.consumer_name,
        )

    async def stop(self) -> None:
        grace = self.settings.shutdown_grace_s
        await self.server.set_serving(False)
        for consumer in self.consumers:
            await consumer.stop()
        await self.sweep.stop()
        await self.wait_timer.stop()
        if self.notifier is not None:
            await self.notifier.stop()
        if self.fleet_metrics is not None:
            await self.fleet_metrics.stop()
        await self.server.stop(grace)
        await self.run_ends.stop()
        await self.ends_redis.aclose()
        await self.result_store_channel.close()
        await self.watch_redis.aclose()
        await self.redis.aclose()
        log.info("scheduler stopped")


def create_app(settings: SchedulerSettings, redis: aioredis.Redis) -> SchedulerApp:
    """Wire (not start) the scheduler; ``settings.listen_address`` with port 0 binds any free port."""
    return SchedulerApp(settings, redis)
