"""The worker assembled: wiring, start-up, background loops and graceful shutdown.

:class:`Worker` is wired on construction (Redis clients, downstream clients, the health server's
port); as a process, ``graflow_runtime.service`` checks Redis before :meth:`Worker.start`.
Start-up: health server -> consumer groups -> RegisterWorker -> the ended-runs watchers' start (the
tail of each cell's ``gf:ended``) -> committer, heartbeats, ended-runs watchers -> the first
heartbeat answered on the stream -> read loops -> health SERVING.

Each cell of the key layout (docs/architecture.md, "Redis Cluster: cells") has its own
:class:`~graflow_worker.consumer.Consumer` (read loop, reader connection from
:func:`cell_reader`, position in the cell's ended-runs stream, watcher loop); they share the
intake, the runner and the committer. With one cell there is one of each, as before cells.

Shutdown (SIGTERM, a DRAIN command, or :meth:`Worker.request_stop`): NOT_SERVING, stop reading at
once (a blocking read is unblocked), let the tasks in flight finish and commit within
``shutdown_grace_s`` (heartbeats continue meanwhile), then deregister and close. What did not
finish stays pending in the queue group; the coordinator reclaims it (or this worker resumes it when
restarted with the same worker id).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from graflow_api.v1 import coordinator_pb2_grpc as co_grpc
from graflow_api.v1 import result_store_pb2_grpc as rs_grpc
from graflow_api.v1 import scheduler_pb2_grpc
from graflow_runtime import keys
from graflow_runtime.grpc_client import Downstream, open_channel
from graflow_runtime.grpc_server import create_server
from graflow_runtime.redis_client import connect
from graflow_runtime.tls import channel_credentials
from graflow_runtime.version import __version__

from graflow_worker.channel import ResultStoreChannel
from graflow_worker.children import SchedulerChildren
from graflow_worker.committer import Committer
from graflow_worker.consumer import Consumer
from graflow_worker.intake import Intake
from graflow_worker.membership import Membership
from graflow_worker.registry import Registry, load_registry
from graflow_worker.run_endings import RunEndings
from graflow_worker.runner import Runner
from graflow_worker.settings import WorkerSettings

log = structlog.get_logger(__name__)

# Longest wait for the heartbeat stream's goodbye at shutdown.
GOODBYE_S = 2.0


@dataclass(frozen=True)
class CellReader:
    """The clients of one cell's read loop: ``reader`` holds its blocking reads (one connection, of
    its own); ``control`` sends the ``CLIENT UNBLOCK`` that interrupts them, so it must reach the
    Redis node ``reader`` is connected to."""

    reader: aioredis.Redis
    control: aioredis.Redis


def cell_reader(settings: WorkerSettings, redis: aioredis.Redis, cell: int) -> CellReader:
    """The clients of ``cell``'s read loop: the one place that knows where a cell's lanes live. On
    a single Redis every cell is on it, and the worker's shared client unblocks the reads. On a
    Redis Cluster the cell is one slot on one primary: the reader's one connection and a control
    client of its own go to that primary (``home_key``: any key of the cell), whichever it is after
    a failover."""
    if not settings.redis_cluster:
        return CellReader(reader=connect(settings.redis_url, max_connections=1), control=redis)
    home = keys.runs_ended(cell)
    return CellReader(
        reader=connect(settings.redis_url, max_connections=1, home_key=home),
        control=connect(settings.redis_url, max_connections=1, home_key=home),
    )


def create_worker(settings: WorkerSettings, registry: Registry | None = None) -> Worker:
    """A worker for ``settings`` on a Redis client of its own (its task modules are imported now
    unless ``registry`` is given)."""
    return Worker(settings, registry or load_registry(settings.task_modules), connect(settings.redis_url))


class Worker:
    """The worker wired on its settings, task registry and a Redis client, which it owns (closed by
    ``stop``, with the connections of its blocking reads and of its ended-runs watchers)."""

    def __init__(self, settings: WorkerSettings, registry: Registry, redis: aioredis.Redis) -> None:
        s = self.settings = settings
        # Verifies envelopes, signs outcomes (docs/security.md, "Integrity on the bus").
        self.bus_keys = s.bus_keys()
        self.bus_keys.log_mode("worker")
        self.registry = registry
        self.worker_id = settings.worker_id
        self._stop_requested = asyncio.Event()
        self._heartbeats_stop = asyncio.Event()
        self._loops: list[asyncio.Task[Any]] = []
        self._read_tasks: list[asyncio.Task[Any]] = []
        self._heartbeats: asyncio.Task[Any] | None = None
        self._redis = redis
        # The blocking reads, one connection per cell.
        self._readers = [cell_reader(s, redis, cell) for cell in keys.cells()]
        # Reads of the cells' gf:ended while tasks run (short reads: the cells' watchers share it).
        self._endings_redis = connect(s.redis_url, max_connections=1)
        self.intake = Intake(s.concurrency, on_pause=self._on_pause)

        result_store = Downstream("result-store", timeout_s=s.rpc_timeout_s,
                                  fail_max=s.breaker_fail_max, reset_s=s.breaker_reset_s)
        coordinator = Downstream("coordinator", timeout_s=s.rpc_timeout_s,
                                 fail_max=s.breaker_fail_max, reset_s=s.breaker_reset_s)
        scheduler = Downstream("scheduler", timeout_s=s.rpc_timeout_s,
                               fail_max=s.breaker_fail_max, reset_s=s.breaker_reset_s)
        credentials = channel_credentials(s)  # TLS when a CA is set; the health server stays plaintext
        rs_channel = open_channel(s.result_store_address, s.auth_token, credentials)
        co_channel = open_channel(s.coordinator_address, s.auth_token, credentials)
        sc_channel = open_channel(s.scheduler_address, s.auth_token, credentials)
        self._channels = [rs_channel, co_channel, sc_channel]
        rs_stub = rs_grpc.ResultStoreStub(rs_channel)
        co_stub = co_grpc.CoordinatorStub(co_channel)
        sc_stub = scheduler_pb2_grpc.SchedulerStub(sc_channel)
        loop = asyncio.get_running_loop()

        self.runner = Runner(
            registry, worker_id=self.worker_id, concurrency=s.concurrency,
            traceback_frames=s.traceback_frames, intake=self.intake,
            tracing=s.traces_exporter != "none",
            channel_factory=lambda run_id: ResultStoreChannel(
                run_id, downstream=result_store, stub=rs_stub, loop=loop),
            children_factory=lambda run_id: SchedulerChildren(
                run_id, scheduler=scheduler, scheduler_stub=sc_stub, result_store=result_store,
                result_store_stub=rs_stub, loop=loop),
        )
        self.endings = [RunEndings(self._endings_redis, self.runner.cancellations, cell=cell)
                        for cell in keys.cells()]
        self.committer = Committer(redis, result_store=result_store, stub=rs_stub, intake=self.intake,
                                   batch_max=s.commit_batch_max, inline_max_bytes=s.inline_result_max_bytes,
                                   bus_keys=self.bus_keys)
        self.consumers = [
            Consumer(
                redis=redis, reader=clients.reader, control=clients.control, worker_id=self.worker_id,
                queues=list(s.queues), intake=self.intake, runner=self.runner, committer=self.committer,
                result_store=result_store, stub=rs_stub, read_block_ms=s.read_block_ms,
                endings=endings, bus_keys=self.bus_keys, cell=cell,
            )
            for cell, clients, endings in zip(keys.cells(), self._readers, self.endings, strict=True)
        ]
        # Health only (and its reflection): open, like every server's health service.
        self.health = create_server(s.health_listen_address, [], name="worker")
        self.health_address = _advertised(s.health_listen_address, self.health.port)
        self.membership = Membership(
            downstream=coordinator, stub=co_stub, intake=self.intake,
            request=Membership.request_for(self.worker_id, list(s.queues), registry.task_types,
                                           s.concurrency, self.health_address),
            in_flight=lambda: self.held,
            on_drain=self.request_stop,
        )
        self.started = False
        self._stopped = False

    # ---- running ----
    async def run(self, shutdown: asyncio.Event) -> None:
        """Start, run until ``shutdown`` is set (or a stop is requested), then stop gracefully."""
        forward = asyncio.create_task(self._forward(shutdown))
        try:
            await self.start()
            await self._stop_requested.wait()
        finally:
            forward.cancel()
            await self.stop()

    async def _forward(self, shutdown: asyncio.Event) -> None:
        await shutdown.wait()
        self.request_stop()

    def request_stop(self) -> None:
        self._stop_requested.set()
        self.intake.stop()

    async def stop_requested(self) -> None:
        """Return once the worker decided to stop: a DRAIN command, a crashed loop."""
        await self._stop_requested.wait()

    async def start(self) -> None:
        """Health server -> consumer groups -> RegisterWorker (retried until the coordinator
        answers, or a stop is requested) -> the ended-runs watcher -> loops -> the first heartbeat
        answered (at most a lease) -> read loop -> SERVING."""
        with structlog.contextvars.bound_contextvars(worker_id=self.worker_id):
            await self.health.server.start()
            for consumer in self.consumers:
                await consumer.ensure_groups()
            if not await self.membership.register(self._stop_requested):
                return
            # Before the first read: every end from now on reaches the registry.
            for endings in self.endings:
                await endings.start()
            self._heartbeats = self._background(
                self.membership.heartbeat_loop(self._heartbeats_stop), "heartbeats")
            self._loops = [
                self._background(self.committer.run(), "committer"),
                self._heartbeats,
                *(self._background(endings.run(self._heartbeats_stop), f"ended-runs-{cell}")
                  for cell, endings in enumerate(self.endings)),
            ]
            # Read only once the coordinator holds this worker's heartbeat stream, so that a death
            # from the first delivery on is seen at once (without an answer within the lease,
            # read anyway: the lease covers it; a stop requested meanwhile ends the wait too).
            heard = asyncio.create_task(self.membership.heard.wait())
            stopping = asyncio.create_task(self._stop_requested.wait())
            await asyncio.wait({heard, stopping}, timeout=self.membership.lease_s,
                               return_when=asyncio.FIRST_COMPLETED)
            heard.cancel()
            stopping.cancel()
            self._read_tasks = [self._background(consumer.run(), f"reader-{consumer.cell}")
                                for consumer in self.consumers]
            await self.health.set_serving(True)
            self.started = True
            s = self.settings
            log.info("worker consuming", version=__version__, queues=list(s.queues),
                     concurrency=s.concurrency, task_types=self.registry.task_types,
                     health_address=self.health_address)

    def _background(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"worker-{name}")

        def done(t: asyncio.Task[Any]) -> None:
            if not t.cancelled() and t.exception() is not None:
                log.error("worker loop crashed; stopping the worker", loop=name,
                          exc_info=t.exception())
                self.request_stop()

        task.add_done_callback(done)
        return task

    def _on_pause(self) -> None:
        for consumer in self.consumers:
            consumer.unblock()

    @property
    def held(self) -> int:
        """Deliveries read and not yet committed, over every cell."""
        return sum(consumer.held for consumer in self.consumers)

    @property
    def paused_reasons(self) -> frozenset[str]:
        return self.intake.paused_reasons

    # ---- stopping ----
    async def stop(self) -> None:
        """Graceful stop: NOT_SERVING, stop reading, drain within the grace period, deregister, close."""
        if self._stopped:
            return
        self._stopped = True
        self.request_stop()
        grace = self.settings.shutdown_grace_s
        with structlog.contextvars.bound_contextvars(worker_id=self.worker_id):
            log.info("worker stopping", held=self.held, grace_s=grace)
            await self.health.set_serving(False)
            for consumer in self.consumers:
                consumer.stop()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace
            # Unblock the blocking reads (again, in case the first time raced a read's start).
            while any(not task.done() for task in self._read_tasks) and loop.time() < deadline:
                self._on_pause()
                await asyncio.wait(self._read_tasks, timeout=0.05)
            for task in self._read_tasks:
                await _settle(task, 0.0)
            if self.started:
                try:
                    await asyncio.wait_for(self._drain(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    log.warning("shutdown grace elapsed; unfinished deliveries stay pending for reclaim",
                                held=self.held)
            for consumer in self.consumers:
                await consumer.cancel_work()
            self._heartbeats_stop.set()
            for task in self._loops:
                # The heartbeat loop says goodbye on its stream before deregistering: without it,
                # the coordinator would see the stream break and declare this worker dead.
                await _settle(task, GOODBYE_S if task is self._heartbeats else 0.0)
            await self.membership.deregister()
            await self._close()
            log.info("worker stopped")

    async def _drain(self) -> None:
        for consumer in self.consumers:
            await consumer.wait_drained()
        await self.committer.wait_idle()

    async def _close(self) -> None:
        self.runner.close()
        for channel in self._channels:
            await channel.close()
        controls = [clients.control for clients in self._readers if clients.control is not self._redis]
        readers = [clients.reader for clients in self._readers]
        for client in (self._endings_redis, *readers, *controls, self._redis):
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
        await self.health.stop(0.5)


async def _settle(task: asyncio.Task[Any], timeout: float) -> None:
    """Wait up to ``timeout`` for ``task`` to end, then cancel it."""
    if not task.done():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), timeout)
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def _advertised(address: str, port: int) -> str:
    host = address.rsplit(":", 1)[0]
    if host in ("", "0.0.0.0", "[::]", "::"):  # noqa: S104 - reported to the coordinator, not bound
        host = socket.gethostname()
    return f"{host}:{port}"
