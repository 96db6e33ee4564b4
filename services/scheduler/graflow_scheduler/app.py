"""Wiring of the scheduler: Redis clients, downstream clients (one breaker each), the gRPC
server, the outcome consumer and the recovery sweep. ``create_app`` builds, ``start`` runs the
start-up order of docs/architecture.md, ``stop`` runs it backwards."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import redis.asyncio as aioredis
import structlog

from graflow_api.v1 import coordinator_pb2_grpc, result_store_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from graflow_runtime.grpc_client import Downstream, open_channel
from graflow_runtime.grpc_server import ServerHandle, ServicerBinding, create_server
from graflow_runtime.redis_client import check_durability, connect
from graflow_runtime.version import __version__

from graflow_scheduler.api.interceptors import RedisUnavailableInterceptor
from graflow_scheduler.api.servicer import SchedulerServicer
from graflow_scheduler.downstream.coordinator import Dispatcher
from graflow_scheduler.downstream.plan_cache import PlanCache, RunGraphs
from graflow_scheduler.graph.compiler import Limits
from graflow_scheduler.outcomes.apply import OutcomeBatches
from graflow_scheduler.outcomes.consumer import ConsumerConfig, OutcomeConsumer
from graflow_scheduler.outcomes.stream import OutcomeStream
from graflow_scheduler.recovery.keepalive import ResultsKeepAlive
from graflow_scheduler.recovery.sweep import RecoverySweep
from graflow_scheduler.settings import SchedulerSettings
from graflow_scheduler.state.dynamic_nodes import DynamicNodes
from graflow_scheduler.state.reader import RunReader
from graflow_scheduler.state.store import RunStore
from graflow_scheduler.waits.children import ChildRuns
from graflow_scheduler.waits.feedback import FeedbackRequests
from graflow_scheduler.waits.parking import Parking
from graflow_scheduler.waits.resume import ResumedNodes
from graflow_scheduler.waits.timer import WaitTimer

log = structlog.get_logger(__name__)

SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name


def _downstream(name: str, settings: SchedulerSettings) -> Downstream:
    return Downstream(
        name,
        timeout_s=settings.rpc_timeout_s,
        fail_max=settings.breaker_fail_max,
        reset_s=settings.breaker_reset_s,
    )


@dataclass
class SchedulerApp:
    settings: SchedulerSettings
    redis: aioredis.Redis
    watch_redis: aioredis.Redis
    coordinator_channel: grpc.aio.Channel
    result_store_channel: grpc.aio.Channel
    store: RunStore
    servicer: SchedulerServicer
    consumer: OutcomeConsumer
    sweep: RecoverySweep
    wait_timer: WaitTimer
    server: ServerHandle

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self, *, background: bool = True) -> None:
        """Redis checks and scripts, server, SERVING, a recovery sweep pass (dispatching what a
        previous process left READY), then the consumer and the periodic sweep."""
        await check_durability(self.redis)
        await self.store.load_scripts()
        await self.consumer.stream.ensure_group()
        await self.server.server.start()
        await self.server.set_serving(True)
        if background:
            await self.sweep.sweep_safely()  # what a previous process left READY
            self.consumer.start()
            self.sweep.start(delay_s=self.sweep.interval_s)
            self.wait_timer.start()
        log.info(
            "scheduler listening",
            version=__version__,
            port=self.port,
            address=self.settings.listen_address,
            consumer=self.settings.consumer_name,
        )

    async def stop(self) -> None:
        """NOT_SERVING, stop the loops (the current batch finishes), stop the server within the
        grace period, close the clients."""
        grace = self.settings.shutdown_grace_s
        await self.server.set_serving(False)
        await self.consumer.stop()
        await self.sweep.stop()
        await self.wait_timer.stop()
        await self.server.stop(grace)
        await self.coordinator_channel.close()
        await self.result_store_channel.close()
        await self.watch_redis.aclose()
        await self.redis.aclose()
        log.info("scheduler stopped")


def create_app(settings: SchedulerSettings) -> SchedulerApp:
    """Build (not start) the scheduler from ``settings``."""
    redis = connect(settings.redis_url)
    watch_redis = connect(settings.redis_url, max_connections=settings.watch_max_connections)
    coordinator_channel = open_channel(settings.coordinator_address, settings.auth_token)
    result_store_channel = open_channel(settings.result_store_address, settings.auth_token)
    dispatcher = Dispatcher(
        coordinator_pb2_grpc.CoordinatorStub(coordinator_channel), _downstream("coordinator", settings)
    )
    result_store_stub = result_store_pb2_grpc.ResultStoreStub(result_store_channel)
    result_store = _downstream("result-store", settings)  # one breaker for every call to it
    plans = PlanCache(result_store_stub, result_store, capacity=settings.plan_cache_size)
    store = RunStore(redis, retention_s=settings.retention_s)
    reader = RunReader(redis)
    graphs = RunGraphs(reader)
    limits = Limits(max_nodes=settings.max_nodes, max_args_bytes=settings.max_args_bytes)
    dynamic = DynamicNodes(redis)
    resumed = ResumedNodes(redis, plans, graphs, dispatcher, dynamic)
    feedback = FeedbackRequests(store, resumed)
    children = ChildRuns(store, resumed)
    wait_timer = WaitTimer(redis, feedback, children, interval_s=settings.wait_timer_interval_s)
    servicer = SchedulerServicer(
        store,
        reader,
        RunReader(watch_redis),
        plans,
        graphs,
        dispatcher,
        feedback,
        children,
        limits=limits,
        watch_block_ms=settings.watch_block_ms,
    )
    consumer = OutcomeConsumer(
        OutcomeBatches(
            OutcomeStream(redis, settings.consumer_name),
            store,
            graphs,
            plans,
            dispatcher,
            dynamic=dynamic,
            limits=limits,
            parking=Parking(redis),
            children=children,
        ),
        ConsumerConfig(
            batch=settings.outcome_batch,
            block_ms=settings.outcome_block_ms,
            max_deliveries=settings.outcome_max_deliveries,
            claim_idle_ms=settings.claim_idle_ms,
            trim_interval_s=settings.sweep_interval_s,
            stats_log_interval_s=settings.stats_log_interval_s,
        ),
    )
    keepalive = ResultsKeepAlive(
        redis, result_store_stub, result_store, interval_s=settings.results_keepalive_s
    )
    sweep = RecoverySweep(
        reader,
        plans,
        dispatcher,
        interval_s=settings.sweep_interval_s,
        retention_s=settings.retention_s,
        dynamic=dynamic,
        keepalive=keepalive,
    )
    server = create_server(
        settings.listen_address,
        [ServicerBinding(scheduler_pb2_grpc.add_SchedulerServicer_to_server, servicer, SERVICE_NAME)],
        auth_token=settings.auth_token,
        extra_interceptors=[RedisUnavailableInterceptor()],
    )
    return SchedulerApp(
        settings=settings,
        redis=redis,
        watch_redis=watch_redis,
        coordinator_channel=coordinator_channel,
        result_store_channel=result_store_channel,
        store=store,
        servicer=servicer,
        consumer=consumer,
        sweep=sweep,
        wait_timer=wait_timer,
        server=server,
    )
