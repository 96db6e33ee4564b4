"""Dispatch: append a batch of deliveries to their queue streams, idempotently, in one round trip.

One mechanism, two callers (issue 13): the scheduler enqueues the nodes it makes READY itself, in
its own round trip to Redis (no call to the coordinator on a run's path), and the coordinator's
``Dispatch`` RPC (v1, for other callers) runs the same code.

Cells (docs/architecture.md, "Redis Cluster: cells"): a delivery goes to the queue lanes, the retry
timer and its wake-up stream of its run's cell, and is checked against that cell's ended-runs
stream; a batch is split into one script call per cell (pipelined together). The keys named below
are the default layout's (one cell).

Each delivery is skipped as a duplicate when ``gf:dispatch:{run}[node] >= attempt``; otherwise the
attempt is recorded and the envelope is appended (``XADD gf:q:<queue> * e <bytes>``, with ``k`` and
``s``, its key id and HMAC, when the process has signing keys: graflow_runtime.signing) or, with a
delay, scheduled on the coordinator's retry timer (``ZADD gf:retry <due> "<queue>\\n<bytes>"``;
a delivery due before everything the timer held also appends to ``gf:retry:wake``, which wakes the
timers at once wherever they run). The check, the record and the append of a delivery happen in
one Lua script, so a repeated dispatch (the scheduler re-sends after a crash) never appends twice.
Queue streams get their consumer group before the first append (:class:`QueueGroups`), and again
when one vanished.

Lanes (docs/architecture.md, "Priority lanes"): a delivery goes to its queue's high lane when it
replaces an attempt lost with its worker (``Delivery.replaces_lost_attempt``) or its envelope's
priority is above 0, else to the normal lane; workers read the high lane first, so those overtake
the normal lane's backlog. A delayed delivery keeps its lane through the retry timer (the member's
head names it). Within a lane, the deliveries of one Dispatch are appended highest priority first.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog

from graflow_api.v1 import coordinator_pb2, messages_pb2
from graflow_runtime import keys, metrics
from graflow_runtime.errors import InvalidRequest
from graflow_runtime.names import queue_name_problem
from graflow_runtime.queues import QueueGroups, QueueLimitReached
from graflow_runtime.scripts import LuaScript, ScriptCall
from graflow_runtime.signing import UNSIGNED, BusKeys, Kind

log = structlog.get_logger(__name__)

# Deliveries per script call; the calls of one batch are pipelined (one round trip), and each call
# stays short so Redis is never blocked for long by a huge batch.
CHUNK = 500

# One call per chunk: check, record and append each delivery (dispatch.lua says how).
_DISPATCH = LuaScript.load(__package__, "dispatch.lua")


class InvalidDelivery(InvalidRequest):
    """A delivery of a batch is malformed; nothing of the batch was dispatched."""


class QueueStreamsVanishing(RuntimeError):
    """Queue streams were deleted again each time their consumer group was recreated."""


@dataclass(frozen=True)
class DispatchResult:
    accepted: int
    duplicates: int


def high_lane(delivery: coordinator_pb2.Delivery) -> bool:
    """Whether ``delivery`` goes to its queue's high lane."""
    return delivery.replaces_lost_attempt or delivery.envelope.priority > 0


def validate_delivery(index: int, delivery: coordinator_pb2.Delivery) -> None:
    where = f"deliveries[{index}]"
    if not delivery.HasField("envelope"):
        raise InvalidDelivery(f"{where}: envelope is missing")
    env = delivery.envelope
    for field in ("run_id", "node_id", "task_type", "queue"):
        if not getattr(env, field):
            raise InvalidDelivery(f"{where}: envelope.{field} is empty; every delivery needs it")
    if env.attempt == 0:
        raise InvalidDelivery(
            f"{where} (run {env.run_id}, node {env.node_id}): envelope.attempt is 0; attempts start at 1"
        )
    problem = queue_name_problem(env.queue)
    if problem:
        raise InvalidDelivery(f"{where}: envelope.queue: {problem}")


class Dispatcher:
    def __init__(
        self,
        redis: aioredis.Redis,
        groups: QueueGroups,
        *,
        record_ttl_s: int,
        bus_keys: BusKeys = UNSIGNED,
    ) -> None:
        self._redis = redis
        self._groups = groups
        self._record_ttl_s = record_ttl_s
        self._keys = bus_keys

    async def ensure_queues(self, queues: Iterable[str]) -> None:
        """Make the queues usable now (registered, streams and group made); raises
        :class:`~graflow_runtime.queues.QueueLimitReached` for queues beyond the limit."""
        await self._groups.ensure(queues)

    async def dispatch(self, deliveries: Sequence[coordinator_pb2.Delivery]) -> DispatchResult:
        """Validate the whole batch (raises :class:`InvalidDelivery`), then dispatch it. Redis errors
        propagate: part of the batch may have been written, and dispatching it again is safe."""
        for index, delivery in enumerate(deliveries):
            validate_delivery(index, delivery)
        if not deliveries:
            return DispatchResult(0, 0)
        started = time.perf_counter()
        ordered = sorted(deliveries, key=lambda d: -d.envelope.priority)
        try:
            await self._groups.ensure({d.envelope.queue for d in ordered})
        except QueueLimitReached as exc:
            # Only the deliveries on refused queues stay behind (not enqueued: their nodes stay
            # READY, and the recovery sweep tries again); the rest of the batch goes on.
            refused = set(exc.queues)
            log.error("deliveries not enqueued: their queues are over the limit", error=str(exc))
            ordered = [d for d in ordered if d.envelope.queue not in refused]
            if not ordered:
                return DispatchResult(0, 0)
        now_ms = int(time.time() * 1000)
        # A script call touches one cell (one slot on a cluster): the deliveries are grouped by
        # their run's cell (in order), each group cut in chunks; all calls go in one pipeline.
        by_cell: dict[int, list[coordinator_pb2.Delivery]] = {}
        for delivery in ordered:
            by_cell.setdefault(keys.cell_of(delivery.envelope.run_id), []).append(delivery)
        chunks = [
            self._chunk_call(cell, group[start : start + CHUNK], now_ms)
            for cell, group in by_cell.items()
            for start in range(0, len(group), CHUNK)
        ]
        accepted = duplicates = ended = 0
        for _ in range(3):
            replies = await _DISPATCH.run_many(self._redis, chunks)
            retry: list[ScriptCall] = []
            for call, reply in zip(chunks, replies, strict=True):
                if int(reply[0]) == -1:
                    for queue in {q.decode() if isinstance(q, bytes) else q for q in reply[1:]}:
                        log.warning("queue stream vanished; recreating its consumer group", queue=queue)
                        self._groups.forget(queue)
                        await self._groups.ensure([queue])
                    retry.append(call)
                else:
                    accepted += int(reply[0])
                    duplicates += int(reply[1])
                    ended += int(reply[2])
            if not retry:
                break
            chunks = retry
        else:
            raise QueueStreamsVanishing(
                "queue streams keep vanishing while dispatching; is something deleting gf:q:* keys?"
            )
        if ended:
            log.info("deliveries of ended runs not enqueued", deliveries=ended)
        log.debug("dispatched", deliveries=len(ordered), accepted=accepted, duplicates=duplicates)
        metrics.DISPATCH_BATCH_SIZE.observe(len(ordered))
        metrics.DISPATCH_SECONDS.observe(time.perf_counter() - started)
        return DispatchResult(accepted, duplicates)

    def _chunk_call(
        self, cell: int, deliveries: Sequence[coordinator_pb2.Delivery], now_ms: int
    ) -> ScriptCall:
        """The script call of ``deliveries``, all of runs of ``cell``: the keys of that cell only."""
        call_keys: list[str] = [keys.retry_timer(cell), keys.runs_ended(cell)]
        args: list[bytes | str | int] = [self._record_ttl_s]
        for delivery in deliveries:
            env = messages_pb2.TaskEnvelope()
            env.CopyFrom(delivery.envelope)
            due_ms = now_ms + delivery.delay_ms if delivery.delay_ms else 0
            env.enqueued_at_ms = due_ms or now_ms
            high = high_lane(delivery)
            stream = keys.queue_high_stream(env.queue, cell) if high else keys.queue_stream(env.queue, cell)
            data = env.SerializeToString()
            signature = self._keys.sign(Kind.ENVELOPE, data)
            key_id, mac = (signature.key_id, signature.mac) if signature else (b"", b"")
            # A delayed delivery's queue is the retry timer member's head, which names its lane and
            # carries its signature to the entry the timer appends.
            head = keys.retry_head(env.queue, high=high, key_id=key_id, mac=mac) if due_ms else env.queue
            call_keys += [keys.dispatch_record(env.run_id), stream, keys.run_meta(env.run_id)]
            args += [env.node_id, env.attempt, due_ms, head, data, key_id, mac]
        call_keys.append(keys.retry_wake(cell))
        return call_keys, args
