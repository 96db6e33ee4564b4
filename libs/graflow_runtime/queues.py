"""Queue streams' consumer group: created once per process before anything appends to a queue
(dispatch, the coordinator's retry timer and replays), and again when its stream vanished.

A queue ``q`` is two streams, its lanes, each read by the consumer group ``workers``: the high
lane ``gf:qh:q``, which workers read first, and the normal lane ``gf:q:q`` (``keys.queue_lanes``;
docs/architecture.md, "Priority lanes"). Entries carry the ``TaskEnvelope`` bytes in field ``e``.
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

log = structlog.get_logger(__name__)


class QueueGroups:
    """Creates the ``workers`` group of both lanes of each queue once per process, before any append.

    A new stream gets its group at id 0 (so nothing appended by anybody in between is skipped); an
    existing stream without the group gets it at ``$``. Scripts that append use NOMKSTREAM-style
    checks and call :meth:`forget` when a stream vanished (FLUSHDB, DEL), so it is created again.
    """

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._ready: set[str] = set()

    @property
    def known(self) -> frozenset[str]:
        return frozenset(self._ready)

    async def ensure(self, queues: Iterable[str]) -> None:
        for queue in queues:
            if queue not in self._ready:
                await self._create(queue)
                self._ready.add(queue)

    def forget(self, queue: str) -> None:
        self._ready.discard(queue)

    async def _create(self, queue: str) -> None:
        for stream in keys.queue_lanes(queue):
            start = "$" if await self._redis.exists(stream) else "0"
            try:
                await self._redis.xgroup_create(stream, keys.WORKER_GROUP, id=start, mkstream=True)
                log.info("queue consumer group created", queue=queue, stream=stream, start=start)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
