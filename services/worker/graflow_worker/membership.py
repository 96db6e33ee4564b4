"""The worker's membership with the coordinator: register, heartbeat, deregister.

A heartbeat is sent every ``heartbeat_interval_ms`` (from ``RegisterWorker``) with the number of
deliveries in flight. ``NOT_FOUND`` means the coordinator declared this worker dead (and reclaimed
its work): it registers again. When heartbeats have failed for longer than ``lease_timeout_ms`` the
coordinator may consider the worker dead at any moment, so the intake pauses until a heartbeat
goes through again (invariant 4: a worker that cannot heartbeat stops taking work). (Ended runs do
not come through heartbeats: see :mod:`graflow_worker.run_endings`.)
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable

import grpc
import structlog

from graflow_api.v1 import coordinator_pb2 as co_pb2
from graflow_api.v1 import coordinator_pb2_grpc as co_grpc
from graflow_runtime.backoff import Backoff
from graflow_runtime.grpc_client import Downstream, DownstreamUnavailable

from graflow_worker.intake import Intake, sleep_unless

log = structlog.get_logger(__name__)

PAUSE_HEARTBEAT = "heartbeats failing beyond the lease"
DEFAULT_INTERVAL_MS = 1000
DEFAULT_LEASE_MS = 10_000


class Membership:
    def __init__(self, *, downstream: Downstream, stub: co_grpc.CoordinatorStub, intake: Intake,
                 request: co_pb2.RegisterWorkerRequest, in_flight: Callable[[], int],
                 on_drain: Callable[[], None]) -> None:
        self._downstream = downstream
        self._stub = stub
        self._intake = intake
        self._request = request
        self._in_flight = in_flight
        self._on_drain = on_drain
        self.interval_s = DEFAULT_INTERVAL_MS / 1000
        self.lease_s = DEFAULT_LEASE_MS / 1000
        self.registered = False

    @staticmethod
    def request_for(worker_id: str, queues: list[str], task_types: list[str], concurrency: int,
                    health_address: str) -> co_pb2.RegisterWorkerRequest:
        return co_pb2.RegisterWorkerRequest(
            worker_id=worker_id, queues=queues, task_types=task_types, concurrency=concurrency,
            hostname=socket.gethostname(), pid=os.getpid(), health_address=health_address,
        )

    async def register(self, stop: asyncio.Event) -> bool:
        """Register, retrying with backoff while the coordinator is unreachable. False if stopped."""
        backoff = Backoff(cap=2.0)
        while not stop.is_set():
            try:
                response = await self._downstream.call(self._stub.RegisterWorker, self._request)
            except (DownstreamUnavailable, grpc.aio.AioRpcError) as exc:
                delay = backoff.next_delay()
                log.warning("cannot register with the coordinator; retrying", error=str(exc),
                            retry_in_s=round(delay, 3))
                await sleep_unless(stop, delay)
                continue
            self._apply(response)
            log.info("registered with the coordinator", queues=list(self._request.queues),
                     task_types=len(self._request.task_types), heartbeat_interval_s=self.interval_s,
                     lease_timeout_s=self.lease_s)
            return True
        return False

    async def heartbeat_loop(self, stop: asyncio.Event) -> None:
        last_ok = time.monotonic()
        while not await sleep_unless(stop, self.interval_s):
            if await self._beat():
                last_ok = time.monotonic()
                self._intake.resume(PAUSE_HEARTBEAT)
            elif time.monotonic() - last_ok > self.lease_s:
                self._intake.pause(PAUSE_HEARTBEAT)

    async def _beat(self) -> bool:
        request = co_pb2.HeartbeatRequest(worker_id=self._request.worker_id, in_flight=self._in_flight())
        # A heartbeat that takes longer than half the lease is as good as lost.
        timeout = min(self._downstream.timeout_s, max(0.1, self.lease_s / 2))
        try:
            response = await self._downstream.call(self._stub.Heartbeat, request, timeout_s=timeout)
        except DownstreamUnavailable as exc:
            log.warning("heartbeat failed", error=str(exc))
            return False
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                log.warning("heartbeat rejected", code=exc.code().name, details=exc.details())
                return False
            log.warning("the coordinator does not know this worker (lease expired); registering again")
            return await self._reregister()
        if co_pb2.HeartbeatResponse.COMMAND_DRAIN in response.commands:
            log.info("the coordinator asked this worker to drain")
            self._on_drain()
        return True

    async def _reregister(self) -> bool:
        try:
            response = await self._downstream.call(self._stub.RegisterWorker, self._request)
        except (DownstreamUnavailable, grpc.aio.AioRpcError) as exc:
            log.warning("registering again failed", error=str(exc))
            return False
        self._apply(response)
        return True

    def _apply(self, response: co_pb2.RegisterWorkerResponse) -> None:
        self.interval_s = (response.heartbeat_interval_ms or DEFAULT_INTERVAL_MS) / 1000
        self.lease_s = (response.lease_timeout_ms or DEFAULT_LEASE_MS) / 1000
        self.registered = True

    async def deregister(self) -> None:
        if not self.registered:
            return
        try:
            await self._downstream.call(
                self._stub.DeregisterWorker,
                co_pb2.DeregisterWorkerRequest(worker_id=self._request.worker_id),
            )
            log.info("deregistered from the coordinator")
        except (DownstreamUnavailable, grpc.aio.AioRpcError) as exc:
            log.warning("deregistering failed; the coordinator will notice the missed heartbeats",
                        error=str(exc))
        self.registered = False
