"""Queue streams' consumer group: created once per process before anything appends to a queue
(dispatch, the coordinator's retry timer and replays), and again when its stream vanished.

A queue ``q`` is two streams, its lanes, each read by the consumer group ``workers``: the high
lane ``gf:qh:q``, which workers read first, and the normal lane ``gf:q:q`` (``keys.queue_lanes``;
docs/architecture.md, "Priority lanes"), in every cell of the key layout (a delivery goes to its
run's cell; docs/architecture.md, "Redis Cluster: cells"). Entries carry the ``TaskEnvelope`` bytes
in field ``e``.
An entry is appended once per attempt (by dispatch, the retry timer or a replay) and never again:
the attempt of a dead worker is reported lost and the scheduler dispatches the next attempt as a
new entry.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ResponseError

from graflow_runtime import keys
from graflow_runtime.errors import ResourceExhausted
from graflow_runtime.limits import MAX_QUEUES
from graflow_runtime.scripts import LuaScript

log = structlog.get_logger(__name__)

_REGISTER = LuaScript.load(__package__, "register_queues.lua")


class QueueLimitReached(ResourceExhausted):
    """Queues that would take the number of queue names in use beyond the limit."""

    def __init__(self, queues: list[str], in_use: int, limit: int) -> None:
        shown = ", ".join(repr(q) for q in queues[:10])
        super().__init__(
            f"queue {shown} would be new, and {in_use:,} queue names are in use already; the limit "
            f"MAX_QUEUES is {limit:,}: use an existing queue"
        )
        self.queues = queues


class QueueGroups:
    """Creates the ``workers`` group of both lanes of each queue in every cell once per process,
    before any append.

    Each queue name is registered first in ``gf:queues``, at most ``max_queues`` of them: its
    streams are never deleted, so a name beyond the limit is refused (:class:`QueueLimitReached`)
    and gets no stream.

    A new stream gets its group at id 0 (so nothing appended by anybody in between is skipped); an
    existing stream without the group gets it at ``$``. Scripts that append use NOMKSTREAM-style
    checks and call :meth:`forget` when a stream vanished (FLUSHDB, DEL), so it is created again.
    """

    def __init__(self, redis: aioredis.Redis, *, max_queues: int = MAX_QUEUES) -> None:
        self._redis = redis
        self._max_queues = max_queues
        self._ready: set[str] = set()

    @property
    def known(self) -> frozenset[str]:
        return frozenset(self._ready)

    async def ensure(self, queues: Iterable[str]) -> None:
        """Register and create the queues this process has not yet. The names not yet in use are
        registered all together or not at all: when they do not fit below the limit, raises
        :class:`QueueLimitReached` naming them (the queues already in use are still created)."""
        new = [queue for queue in dict.fromkeys(queues) if queue not in self._ready]
        if not new:
            return
        replies = await _REGISTER.run(self._redis, [keys.QUEUES], [self._max_queues, *new])
        refused = [_text(queue) for queue in replies]
        for queue in new:
            if queue not in refused:
                await self._create(queue)
                self._ready.add(queue)
        if refused:
            in_use = await self._redis.scard(keys.QUEUES)
            log.warning("queues refused: too many queue names", queues=refused[:10], in_use=in_use)
            raise QueueLimitReached(refused, in_use, self._max_queues)

    def forget(self, queue: str) -> None:
        self._ready.discard(queue)

    async def _create(self, queue: str) -> None:
        for stream in (lane for cell in keys.cells() for lane in keys.queue_lanes(queue, cell)):
            start = "$" if await self._redis.exists(stream) else "0"
            try:
                await self._redis.xgroup_create(stream, keys.WORKER_GROUP, id=start, mkstream=True)
                log.info("queue consumer group created", queue=queue, stream=stream, start=start)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
