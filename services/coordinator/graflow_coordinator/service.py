"""The gRPC face of the coordinator: translates requests to the domain objects (the server's
interceptors add tracing, auth, per-call context and the status codes of their errors)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import redis.asyncio as aioredis
from structlog.contextvars import bound_contextvars

from graflow_api.v1 import coordinator_pb2 as pb
from graflow_api.v1 import coordinator_pb2_grpc
from graflow_runtime.audit import AuditLog
from graflow_runtime.dispatch import Dispatcher

from graflow_coordinator.deadletters import DeadLetters
from graflow_coordinator.fleet_metrics import QueueStat, queue_stats
from graflow_coordinator.heartbeats import HeartbeatStreams
from graflow_coordinator.workers import WorkerRegistry

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Coordinator"].full_name

Ctx = grpc.aio.ServicerContext


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(
        self,
        redis: aioredis.Redis,
        dispatcher: Dispatcher,
        registry: WorkerRegistry,
        dead_letters: DeadLetters,
        heartbeat_streams: HeartbeatStreams,
        audit: AuditLog,
        *,
        heartbeat_interval_ms: int,
        lease_timeout_ms: int,
    ) -> None:
        self._redis = redis
        self._dispatcher = dispatcher
        self._registry = registry
        self._dead_letters = dead_letters
        self._heartbeat_streams = heartbeat_streams
        self._audit = audit
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._lease_timeout_ms = lease_timeout_ms

    async def Dispatch(self, request: pb.DispatchRequest, context: Ctx) -> pb.DispatchResponse:
        result = await self._dispatcher.dispatch(request.deliveries)
        return pb.DispatchResponse(accepted=result.accepted, duplicates=result.duplicates)

    async def RegisterWorker(
        self, request: pb.RegisterWorkerRequest, context: Ctx
    ) -> pb.RegisterWorkerResponse:
        with bound_contextvars(worker_id=request.worker_id):
            await self._registry.register(request)
        return pb.RegisterWorkerResponse(
            heartbeat_interval_ms=self._heartbeat_interval_ms, lease_timeout_ms=self._lease_timeout_ms
        )

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Ctx) -> pb.HeartbeatResponse:
        with bound_contextvars(worker_id=request.worker_id):
            await self._registry.heartbeat(request.worker_id, request.in_flight)
        return pb.HeartbeatResponse()

    async def HeartbeatStream(
        self, request_iterator: AsyncIterator[pb.HeartbeatRequest], context: Ctx
    ) -> AsyncIterator[pb.HeartbeatResponse]:
        async for answer in self._heartbeat_streams.serve(request_iterator):
            yield answer

    async def DeregisterWorker(
        self, request: pb.DeregisterWorkerRequest, context: Ctx
    ) -> pb.DeregisterWorkerResponse:
        with bound_contextvars(worker_id=request.worker_id):
            await self._registry.deregister(request.worker_id)
        return pb.DeregisterWorkerResponse()

    async def ListWorkers(self, request: pb.ListWorkersRequest, context: Ctx) -> pb.ListWorkersResponse:
        return pb.ListWorkersResponse(workers=await self._registry.list_live())

    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: Ctx
    ) -> pb.ListDeadLettersResponse:
        if request.ids:
            letters = await self._dead_letters.get(request.ids)
        else:
            letters = await self._dead_letters.list(limit=request.limit, after_id=request.after_id)
        return pb.ListDeadLettersResponse(dead_letters=letters)

    async def ReplayDeadLetters(
        self, request: pb.ReplayDeadLettersRequest, context: Ctx
    ) -> pb.ReplayDeadLettersResponse:
        done = await self._dead_letters.replay(
            ids=list(request.ids), replay_all=request.all, after_id=request.after_id
        )
        return pb.ReplayDeadLettersResponse(
            replayed=done.replayed, next_after_id=done.next_after_id, left_in_place=done.left_in_place
        )

    async def DeleteDeadLetters(
        self, request: pb.DeleteDeadLettersRequest, context: Ctx
    ) -> pb.DeleteDeadLettersResponse:
        deleted, not_found = await self._dead_letters.delete(list(request.ids))
        return pb.DeleteDeadLettersResponse(deleted=deleted, not_found=not_found)

    async def ListQueues(self, request: pb.ListQueuesRequest, context: Ctx) -> pb.ListQueuesResponse:
        stats = await queue_stats(self._redis)
        workers: dict[str, int] = {}
        for worker in await self._registry.list_live():
            for queue in worker.queues:
                workers[queue] = workers.get(queue, 0) + 1
        queues = [
            pb.QueueStats(
                queue=name,
                length=stat.length,
                lag=stat.lag,
                pending=stat.pending,
                oldest_pending_age_ms=stat.oldest_pending_age_ms,
                workers=workers.get(name, 0),
            )
            for name, stat in ((name, stats.get(name, QueueStat())) for name in sorted({*stats, *workers}))
        ]
        return pb.ListQueuesResponse(queues=queues)

    async def NotifyCanceled(
        self, request: pb.NotifyCanceledRequest, context: Ctx
    ) -> pb.NotifyCanceledResponse:
        """Deprecated, accepted and ignored (contracts v1): workers learn of every run's end from
        the scheduler's gf:ended stream (docs/architecture.md, "Cancellation reaching tasks")."""
        return pb.NotifyCanceledResponse()

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Ctx
    ) -> pb.ListAuditEventsResponse:
        events = await self._audit.list(limit=request.limit, before_id=request.before_id)
        return pb.ListAuditEventsResponse(events=events)
