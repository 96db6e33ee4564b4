"""The worker registry: who is reading which queues, and whose lease is still live.

``gf:workers`` is a sorted set worker id -> last heartbeat (ms); ``gf:worker:<id>`` a hash with
the worker's info. A worker whose lease expired is marked ``dead`` in its hash (heartbeats then
answer NOT_FOUND) until the liveness loop has reclaimed its work; then both keys are removed.
With a tagged key layout both carry one shared hash tag (``keys.workers_index()``,
``keys.worker_info()``), so the registry's scripts stay in one Redis Cluster slot; the worker's
consumers live in the queue lanes of every cell, so deleting them is one script per cell, separate
from the registry's (docs/architecture.md, "Redis Cluster: cells").

Registration happens before a worker reads anything, so entries pending under its consumer name
at that moment belong to a previous process with the same id (a restart within the lease): their
attempts are reported lost right away instead of waiting for a lease that the new process keeps
renewing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

import redis.asyncio as aioredis
import structlog

from graflow_api.v1 import coordinator_pb2
from graflow_runtime import keys
from graflow_runtime.errors import AlreadyExists, InvalidRequest, NotFound
from graflow_runtime.limits import MAX_QUEUES, MAX_WORKER_TASK_TYPES
from graflow_runtime.names import TASK_TYPE_RULE, is_task_type, queue_name_problem
from graflow_runtime.queues import QueueGroups
from graflow_runtime.scripts import LuaScript

from graflow_coordinator.reclaim import Reclaimer, ReclaimStats

log = structlog.get_logger(__name__)

MAX_WORKER_ID = 200
# Longest hostname and health address a worker registers with.
MAX_WORKER_TEXT = 256
_HEARTBEAT = LuaScript.load(__package__, "heartbeat.lua")
_MARK_DEAD = LuaScript.load(__package__, "mark_dead.lua")
_REMOVE = LuaScript.load(__package__, "remove_worker.lua")
_DELETE_CONSUMER = LuaScript.load(__package__, "delete_consumer.lua")


def lease_expired(worker_id: str) -> str:
    return (
        f"lease expired: worker {worker_id} was declared dead (silent past its lease, or its connection "
        "was lost) and its work reclaimed; register again"
    )


def _text(value: bytes | str | None, default: str = "") -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else value


def _queues_of(info: dict[bytes, bytes]) -> list[str]:
    try:
        queues = json.loads(_text(info.get(b"queues"), "[]"))
    except ValueError:
        return []
    return [q for q in queues if isinstance(q, str)]


def validate_registration(request: coordinator_pb2.RegisterWorkerRequest) -> None:
    worker_id = request.worker_id
    if not worker_id:
        raise InvalidRequest("worker_id is empty; choose a stable id unique to this worker process")
    if len(worker_id) > MAX_WORKER_ID or any(ch.isspace() for ch in worker_id):
        raise InvalidRequest(
            f"worker_id {worker_id[:60]!r} must be at most {MAX_WORKER_ID} characters without whitespace"
        )
    if not request.queues:
        raise InvalidRequest(f"worker {worker_id} names no queues; list the queues it reads")
    if len(request.queues) > MAX_QUEUES:
        raise InvalidRequest(
            f"queues: {len(request.queues):,} queues; the limit MAX_QUEUES is {MAX_QUEUES:,}"
        )
    for queue in request.queues:
        problem = queue_name_problem(queue)
        if problem:
            raise InvalidRequest(f"worker {worker_id}: {problem}")
    if len(request.task_types) > MAX_WORKER_TASK_TYPES:
        raise InvalidRequest(
            f"task_types: {len(request.task_types):,} task types; "
            f"the limit MAX_WORKER_TASK_TYPES is {MAX_WORKER_TASK_TYPES:,}"
        )
    for index, task_type in enumerate(request.task_types):
        if not is_task_type(task_type):
            raise InvalidRequest(f"task_types[{index}] {task_type[:60]!r} is invalid: {TASK_TYPE_RULE}")
    for field in ("hostname", "health_address"):
        value = getattr(request, field)
        if len(value) > MAX_WORKER_TEXT:
            raise InvalidRequest(f"{field} is {len(value)} characters; the limit is {MAX_WORKER_TEXT}")


class WorkerRegistry:
    def __init__(
        self,
        redis: aioredis.Redis,
        groups: QueueGroups,
        reclaimer: Reclaimer,
        *,
        lease_timeout_ms: int,
        default_queues: Iterable[str] = (),
    ) -> None:
        self._redis = redis
        self._groups = groups
        self._reclaimer = reclaimer
        self._lease_timeout_ms = lease_timeout_ms
        self._default_queues = list(default_queues)

    async def register(self, request: coordinator_pb2.RegisterWorkerRequest) -> None:
        validate_registration(request)
        worker_id = request.worker_id
        now_ms = int(time.time() * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zscore(keys.workers_index(), worker_id)
            pipe.hgetall(keys.worker_info(worker_id))
            score, previous = await pipe.execute()
        live = score is not None and previous.get(b"dead") != b"1" and score > now_ms - self._lease_timeout_ms
        if live and (_text(previous.get(b"hostname")), _text(previous.get(b"pid"))) != (
            request.hostname,
            str(request.pid),
        ):
            raise AlreadyExists(
                f"worker id {worker_id} is held by a live worker on {_text(previous.get(b'hostname'))!r} "
                f"pid {_text(previous.get(b'pid'))}; give each worker process a unique id, or wait "
                f"{self._lease_timeout_ms} ms for the previous process's lease to expire"
            )
        await self._groups.ensure(request.queues)
        stats = await self._reclaim_all(
            worker_id,
            [*request.queues, *_queues_of(previous)],
            why="registered again (its previous process died holding the delivery)",
        )
        if stats.total:
            log.warning(
                "worker registered again: deliveries left pending by its previous process were reclaimed",
                worker_id=worker_id,
                **stats.log_fields(),
            )
        registered_at = _text(previous.get(b"registered_at_ms")) if live else str(now_ms)
        info = {
            "worker_id": worker_id,
            "queues": json.dumps(list(request.queues)),
            "task_types": json.dumps(list(request.task_types)),
            "concurrency": request.concurrency,
            "in_flight": 0,
            "hostname": request.hostname,
            "pid": request.pid,
            "health_address": request.health_address,
            "registered_at_ms": registered_at or now_ms,
            "last_heartbeat_ms": now_ms,
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.worker_info(worker_id))
            pipe.hset(keys.worker_info(worker_id), mapping=info)
            pipe.zadd(keys.workers_index(), {worker_id: now_ms})
            await pipe.execute()
        log.info(
            "worker registered",
            worker_id=worker_id,
            queues=list(request.queues),
            task_types=len(request.task_types),
            concurrency=request.concurrency,
        )

    async def heartbeat(self, worker_id: str, in_flight: int) -> None:
        if not worker_id:
            raise InvalidRequest("worker_id is empty; send the id the worker registered with")
        [renewed] = await self.renew({worker_id: in_flight}, int(time.time() * 1000))
        if not renewed:
            raise NotFound(lease_expired(worker_id))

    async def renew(self, beats: dict[str, int], now_ms: int) -> list[bool]:
        """Renew the leases of ``beats`` (worker id -> in flight) at ``now_ms`` in one script call;
        per worker, in order: renewed, or False for a worker unknown or declared dead."""
        renewed = await _HEARTBEAT.run(
            self._redis,
            [keys.workers_index(), *(keys.worker_info(worker_id) for worker_id in beats)],
            [now_ms, *(value for pair in beats.items() for value in pair)],
        )
        return [bool(int(flag)) for flag in renewed]

    async def deregister(self, worker_id: str) -> None:
        """Remove the worker. The attempts it still holds are reported lost first (it said it holds
        nothing)."""
        info = await self._redis.hgetall(keys.worker_info(worker_id))
        queues = [*_queues_of(info), *self._default_queues]
        stats = await self._reclaim_all(worker_id, queues, why="deregistered without finishing it")
        if stats.total:
            log.warning(
                "worker deregistered with deliveries still pending; they were reported lost",
                worker_id=worker_id,
                **stats.log_fields(),
            )
        await self.remove(worker_id, queues, only_if_dead=False)
        log.info("worker deregistered", worker_id=worker_id)

    async def list_live(self) -> list[coordinator_pb2.WorkerInfo]:
        cutoff = int(time.time() * 1000) - self._lease_timeout_ms
        ids = await self._redis.zrangebyscore(keys.workers_index(), f"({cutoff}", "+inf")
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                pipe.hgetall(keys.worker_info(_text(worker_id)))
            infos = await pipe.execute()
        return [_worker_info(info) for info in infos if info and info.get(b"dead") != b"1"]

    async def expired(self, cutoff_ms: int) -> list[tuple[str, int]]:
        """Workers whose last heartbeat is at or before ``cutoff_ms``: (id, last heartbeat ms)."""
        rows = await self._redis.zrangebyscore(keys.workers_index(), "-inf", cutoff_ms, withscores=True)
        return [(_text(worker_id), int(score)) for worker_id, score in rows]

    async def mark_dead(self, worker_id: str, cutoff_ms: int) -> list[str] | None:
        """Mark the worker dead if its lease is still expired; returns its queues, None if it is alive."""
        queues = await _MARK_DEAD.run(
            self._redis,
            [keys.workers_index(), keys.worker_info(worker_id)],
            [worker_id, cutoff_ms, int(time.time() * 1000)],
        )
        if queues is None:
            return None
        return _queues_of({b"queues": queues})

    async def remove(self, worker_id: str, queues: Iterable[str], *, only_if_dead: bool) -> bool:
        """Delete the worker's consumers in every cell (a cell's only where nothing is pending in
        it) and then its registration, unless ``only_if_dead`` and it came back. False when it is
        alive, or a consumer still holds entries (the registration stays: a later pass finishes)."""
        if only_if_dead and await self._redis.hget(keys.worker_info(worker_id), "dead") != b"1":
            return False
        if not await self._delete_consumer(list(dict.fromkeys(queues)), worker_id):
            return False
        result = await _REMOVE.run(
            self._redis,
            [keys.workers_index(), keys.worker_info(worker_id)],
            [worker_id, "1" if only_if_dead else "0"],
        )
        return int(result) == 1

    async def is_registered(self, worker_id: str) -> bool:
        return await self._redis.zscore(keys.workers_index(), worker_id) is not None

    async def delete_orphan_consumer(self, queue: str, consumer: str) -> bool:
        """Delete ``consumer`` from the groups of both lanes of ``queue`` in every cell if it is not
        a registered worker and holds nothing in them. The registry and the lanes are in different
        slots, so the check of the registration comes first, apart: a worker registering right
        after it can lose its consumer, never an entry (a consumer is deleted only where nothing
        is pending, atomically with that check), and its next read creates the consumer again."""
        if await self.is_registered(consumer):
            return False
        return await self._delete_consumer([queue], consumer)

    async def _delete_consumer(self, queues: list[str], consumer: str) -> bool:
        """One delete_consumer.lua call per cell (its lanes of ``queues``), pipelined; True when
        the consumer is deleted from every cell (False: entries are pending for it somewhere)."""
        if not queues:
            return True
        args = [consumer, keys.WORKER_GROUP]
        calls = [
            ([lane for queue in queues for lane in keys.queue_lanes(queue, cell)], args)
            for cell in keys.cells()
        ]
        replies = await _DELETE_CONSUMER.run_many(self._redis, calls)
        return all(int(reply) == 1 for reply in replies)

    async def _reclaim_all(self, worker_id: str, queues: Iterable[str], *, why: str) -> ReclaimStats:
        stats = ReclaimStats()
        for queue in dict.fromkeys(queues):
            stats.add(await self._reclaimer.reclaim_consumer(queue, worker_id, why=why))
        return stats


def _worker_info(info: dict[bytes, bytes]) -> coordinator_pb2.WorkerInfo:
    def number(field: bytes) -> int:
        try:
            return int(_text(info.get(field), "0") or 0)
        except ValueError:
            return 0

    try:
        task_types = [t for t in json.loads(_text(info.get(b"task_types"), "[]")) if isinstance(t, str)]
    except ValueError:
        task_types = []
    return coordinator_pb2.WorkerInfo(
        worker_id=_text(info.get(b"worker_id")),
        queues=_queues_of(info),
        task_types=task_types,
        concurrency=number(b"concurrency"),
        in_flight=number(b"in_flight"),
        hostname=_text(info.get(b"hostname")),
        pid=number(b"pid"),
        registered_at_ms=number(b"registered_at_ms"),
        last_heartbeat_ms=number(b"last_heartbeat_ms"),
        health_address=_text(info.get(b"health_address")),
    )
