"""The worker's membership with the coordinator: register, heartbeat, deregister.

Heartbeats go on one long-lived ``HeartbeatStream``, one request every ``heartbeat_interval_ms``
(from ``RegisterWorker``) with the number of deliveries in flight, each answered by a response
that may carry commands (``COMMAND_DRAIN``). The stream is what makes this worker's death visible
at once: when the process dies its kernel closes the connection, and the coordinator holding the
stream reclaims the worker's deliveries without waiting for the lease. So a worker that stops on
purpose says goodbye first (a last request with ``leaving`` set), then deregisters.

The stream ending otherwise (the coordinator stopped or became unreachable) is followed by a new
one, with backoff. ``NOT_FOUND`` means the coordinator declared this worker dead (its lease expired,
or its stream broke while it was alive: a network blip) and reclaimed its work: it registers again.
A coordinator without the stream (UNIMPLEMENTED) gets unary ``Heartbeat`` calls instead. When no
heartbeat was answered for longer than ``lease_timeout_ms`` the coordinator may consider the worker
dead at any moment, so the intake pauses until one is answered again (invariant 4: a worker that
cannot heartbeat stops taking work). The stream has no deadline; each heartbeat's answer is
expected within the lease instead. (Ended runs do not come through heartbeats: see
:mod:`graflow_worker.run_endings`.)
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
# How long a goodbye waits for the coordinator to end the stream.
GOODBYE_ANSWER_S = 1.0


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
        self._answered_at = time.monotonic()
        # Set once a heartbeat was answered: from then on, this worker's death is seen at once.
        self.heard = asyncio.Event()

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
        """Heartbeat until ``stop`` is set, on a stream (reopened whenever it ends), or with unary
        calls when the coordinator has no stream."""
        self._answered_at = time.monotonic()
        stopped = asyncio.create_task(stop.wait())
        backoff = Backoff(cap=2.0)
        try:
            while not stop.is_set():
                code = await self._stream(stopped)
                if code is None:
                    return
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    log.warning("the coordinator has no heartbeat stream; sending unary heartbeats")
                    await self._unary_loop(stop)
                    return
                if code == grpc.StatusCode.NOT_FOUND:
                    log.warning("the coordinator does not know this worker (declared dead); "
                                "registering again")
                    if await self._reregister():
                        backoff.reset()
                        continue
                else:
                    log.warning("heartbeat stream ended; opening a new one", code=code.name)
                self._check_answered()
                await sleep_unless(stop, backoff.next_delay())
        finally:
            stopped.cancel()

    async def _stream(self, stopped: asyncio.Task[object]) -> grpc.StatusCode | None:
        """Heartbeats on one stream until it ends (returns its status) or ``stopped`` is done (says
        goodbye, returns None)."""
        call = self._stub.HeartbeatStream()
        answers = asyncio.create_task(self._read_answers(call))
        try:
            while not answers.done():
                await call.write(co_pb2.HeartbeatRequest(worker_id=self._request.worker_id,
                                                         in_flight=self._in_flight()))
                await asyncio.wait({answers, stopped}, timeout=self.interval_s,
                                   return_when=asyncio.FIRST_COMPLETED)
                self._check_answered()
                if stopped.done() and not answers.done():
                    await call.write(co_pb2.HeartbeatRequest(worker_id=self._request.worker_id, leaving=True))
                    await call.done_writing()
                    await asyncio.wait({answers}, timeout=GOODBYE_ANSWER_S)
                    return None
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            log.debug("heartbeat stream write failed", error=str(exc))
        finally:
            if not answers.done():
                call.cancel()
            await asyncio.wait({answers})
        return await call.code()

    async def _read_answers(self, call: grpc.aio.StreamStreamCall) -> None:
        try:
            async for response in call:
                self._answered()
                self._commands(response)
        except grpc.aio.AioRpcError:
            return  # the call's status is read by the writer

    async def _unary_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if await self._beat():
                self._answered()
            else:
                self._check_answered()
            await sleep_unless(stop, self.interval_s)

    def _answered(self) -> None:
        self._answered_at = time.monotonic()
        self.heard.set()
        self._intake.resume(PAUSE_HEARTBEAT)

    def _check_answered(self) -> None:
        if time.monotonic() - self._answered_at > self.lease_s:
            self._intake.pause(PAUSE_HEARTBEAT)

    def _commands(self, response: co_pb2.HeartbeatResponse) -> None:
        if co_pb2.HeartbeatResponse.COMMAND_DRAIN in response.commands:
            log.info("the coordinator asked this worker to drain")
            self._on_drain()

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
        self._commands(response)
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
