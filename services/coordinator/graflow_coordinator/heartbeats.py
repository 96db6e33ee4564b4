"""Heartbeat streams: each worker's heartbeats on one long-lived stream, and its death noticed the
moment that stream breaks.

A worker opens ``HeartbeatStream`` after registering and sends a ``HeartbeatRequest`` on it every
heartbeat interval. Each renews the worker's lease like a unary ``Heartbeat``, but the renewals of
every stream this process holds are written together: :class:`LeaseRenewals` gathers them for a
short window and renews the lot in one script call (one Redis round trip, not one per heartbeat).

The stream's end is the signal the lease only approximates. A worker process that dies has its
socket closed by its kernel, so its stream ends at once, without the worker's goodbye (a last
request with ``leaving`` set, sent before a graceful deregistration). The coordinator holding the
stream then declares the worker dead (after ``CONNECTION_LOST_GRACE_S``) and reclaims its
deliveries (:meth:`LivenessLoop.reap`, "connection lost"), unless the worker heartbeated after
this stream's last request (through a new stream, possibly to another replica, after a network
blip) or this coordinator is shutting down (its streams end because it stops, not because the
workers died). A live worker whose stream broke
is then treated as one whose lease expired: NOT_FOUND on its next heartbeat, it registers again,
and the outcomes of the attempts it lost are fenced. The lease still catches what leaves the
connection open: a paused process (SIGSTOP), a partition, a stalled event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import structlog
from structlog.contextvars import bound_contextvars

from graflow_api.v1 import coordinator_pb2 as pb
from graflow_runtime.errors import InvalidRequest, NotFound

from graflow_coordinator.liveness import LivenessLoop
from graflow_coordinator.workers import WorkerRegistry, lease_expired

log = structlog.get_logger(__name__)

CONNECTION_LOST = "connection lost"
# How long a broken stream waits before its worker is declared dead. Processes that die together
# (a host, a deployment killed) are then all gone from Redis, blocked reads included, before their
# work is redelivered: without it, Redis could still serve a dying worker's pending blocking read
# the attempt that another dead worker's reclaim just put back in the queue, and lose it twice.
CONNECTION_LOST_GRACE_S = 0.1
# Every heartbeat is answered once its lease is renewed (commands would ride on the answer).
_ANSWER = pb.HeartbeatResponse()


class LeaseRenewals:
    """Renews leases in batches: every renewal asked within ``window_s`` of the first is written
    by the same script call."""

    def __init__(self, registry: WorkerRegistry, *, window_s: float) -> None:
        self._registry = registry
        self._window_s = window_s
        self._pending: dict[str, tuple[int, list[asyncio.Future[int]]]] = {}
        self._flush: asyncio.Task[None] | None = None

    async def renew(self, worker_id: str, in_flight: int) -> int:
        """Renew ``worker_id``'s lease: the renewal's time (ms), or 0 when the worker is not live."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        _, waiting = self._pending.get(worker_id, (0, []))
        self._pending[worker_id] = (in_flight, [*waiting, future])
        if self._flush is None:
            self._flush = asyncio.create_task(self._flush_after_window(), name="lease-renewals")
        return await future

    async def _flush_after_window(self) -> None:
        await asyncio.sleep(self._window_s)
        batch, self._pending, self._flush = self._pending, {}, None
        now_ms = int(time.time() * 1000)
        try:
            beats = {worker_id: in_flight for worker_id, (in_flight, _) in batch.items()}
            renewed = await self._registry.renew(beats, now_ms)
        except Exception as exc:  # noqa: BLE001 - handed to every caller, which reports it
            for _, waiting in batch.values():
                for future in waiting:
                    if not future.done():
                        future.set_exception(exc)
            return
        for (_, waiting), live in zip(batch.values(), renewed, strict=True):
            for future in waiting:
                if not future.done():
                    future.set_result(now_ms if live else 0)


class HeartbeatStreams:
    """Serves ``HeartbeatStream`` calls; :meth:`close` ends them all without declaring anybody dead."""

    def __init__(self, registry: WorkerRegistry, liveness: LivenessLoop, *, renew_window_ms: int) -> None:
        self._renewals = LeaseRenewals(registry, window_s=renew_window_ms / 1000)
        self._liveness = liveness
        self._serving: set[asyncio.Task[object]] = set()
        self._declaring: set[asyncio.Task[bool]] = set()
        self._closing = False

    async def serve(
        self, requests: AsyncIterator[pb.HeartbeatRequest]
    ) -> AsyncIterator[pb.HeartbeatResponse]:
        """Renew the lease and answer at every request until the stream ends: a goodbye ends it
        quietly, its breaking declares the worker dead (connection lost).

        An async generator over the request iterator, not ``context.read()``/``context.write()``:
        the tracing interceptor (opentelemetry-instrumentation-grpc) wraps streamed responses only
        in that form, and with tracing on the other form failed every stream."""
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - a gRPC handler runs in a task
        self._serving.add(task)
        # The worker is declared dead on a break only if it was not heartbeated since this stream's
        # last request (a newer stream, or a newer process registered under the same id, wins).
        worker_id, cutoff_ms = "", 0
        try:
            async for request in requests:
                if request.leaving:
                    log.info("worker said goodbye on its heartbeat stream", worker_id=worker_id)
                    return
                if not worker_id:
                    log.debug("heartbeat stream opened", worker_id=request.worker_id)
                worker_id = _same_worker(worker_id, request)
                cutoff_ms = int(time.time() * 1000)
                renewed_ms = await self._renewals.renew(worker_id, request.in_flight)
                if not renewed_ms:
                    worker_id = ""  # already declared dead: nothing more to declare
                    raise NotFound(lease_expired(request.worker_id))
                cutoff_ms = renewed_ms
                yield _ANSWER
        except asyncio.CancelledError:
            # The call was cancelled: the connection was reset, or this server is stopping.
            self._declare_lost(worker_id, cutoff_ms)
            raise
        finally:
            self._serving.discard(task)
        self._declare_lost(worker_id, cutoff_ms)

    def _declare_lost(self, worker_id: str, cutoff_ms: int) -> None:
        """Declare the worker of a broken stream dead, in a task of its own: gRPC cancels the
        handler of a call whose connection is gone, which must not cut the declaration short."""
        if not worker_id or self._closing:
            return
        declaring = asyncio.create_task(self._reap(worker_id, cutoff_ms), name=f"connection-lost-{worker_id}")
        self._declaring.add(declaring)
        declaring.add_done_callback(self._declared)

    def _declared(self, declaring: asyncio.Task[bool]) -> None:
        self._declaring.discard(declaring)
        if not declaring.cancelled() and declaring.exception() is not None:
            log.error(
                "declaring a worker dead after its stream broke failed; its lease will expire instead",
                exc_info=declaring.exception(),
            )

    async def _reap(self, worker_id: str, cutoff_ms: int) -> bool:
        await asyncio.sleep(CONNECTION_LOST_GRACE_S)
        with bound_contextvars(worker_id=worker_id):
            return await self._liveness.reap(
                worker_id,
                cutoff_ms,
                why=f"was declared dead: {CONNECTION_LOST} (its heartbeat stream broke without a goodbye)",
                cause=f"{CONNECTION_LOST}: its heartbeat stream broke without a goodbye",
            )

    async def close(self, timeout_s: float) -> None:
        """End every stream (the workers reconnect elsewhere or to this coordinator's successor)
        and wait up to ``timeout_s`` for declarations already under way."""
        self._closing = True
        for task in list(self._serving):
            task.cancel()
        if self._declaring:
            await asyncio.wait(list(self._declaring), timeout=timeout_s)


def _same_worker(worker_id: str, request: pb.HeartbeatRequest) -> str:
    if not request.worker_id:
        raise InvalidRequest("worker_id is empty; send the id the worker registered with")
    if worker_id and request.worker_id != worker_id:
        raise InvalidRequest(
            f"heartbeat stream of worker {worker_id} got a heartbeat of {request.worker_id}; "
            "open one stream per worker"
        )
    return request.worker_id
