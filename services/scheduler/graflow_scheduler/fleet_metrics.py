"""The scheduler's fleet-wide metrics: runs and waiting feedback requests over every cell, and the
runs that ended by status, measured by the replica holding the lease (graflow_runtime.fleet)."""

from __future__ import annotations

from collections import Counter

import redis.asyncio as aioredis

from graflow_runtime import keys
from graflow_runtime.fleet import FleetGauge, Measurement

GAUGES = (
    FleetGauge(
        "graflow_runs",
        "Runs kept in Redis by status: 'active' (RUNNING or PAUSED, not ended yet) and 'retained' "
        "(every run still indexed, ended or not).",
        ("status",),
    ),
    FleetGauge("graflow_feedback_waiting", "Feedback requests whose node waits for an answer."),
    FleetGauge(
        "graflow_runs_ended",
        "Runs that ended, by final status, since this replica took the lease (the ended-runs streams).",
        ("status",),
        counter=True,
    ),
)
# Entries of an ended-runs stream read per XREAD.
_READ_COUNT = 1000


class FleetMeasure:
    """Measures the gauges; counts the ended runs from where each cell's ended-runs stream stood
    when the lease was taken."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._cursors: dict[int, bytes] = {}
        self._ended: Counter[str] = Counter()

    async def __call__(self, taken: bool) -> Measurement:
        if taken:
            self._cursors, self._ended = {}, Counter()
        await self._count_ends()
        pipe = self._redis.pipeline(transaction=False)
        for cell in keys.cells():
            pipe.scard(keys.active_runs(cell))
            pipe.zcard(keys.runs_index(cell))
            pipe.zcard(keys.feedback_pending(cell))
        replies = await pipe.execute()
        active, retained, waiting = (float(sum(replies[i::3])) for i in range(3))
        return {
            "graflow_runs": {("active",): active, ("retained",): retained},
            "graflow_feedback_waiting": {(): waiting},
            "graflow_runs_ended": {(status,): float(n) for status, n in self._ended.items()},
        }

    async def _count_ends(self) -> None:
        for cell in keys.cells():
            stream = keys.runs_ended(cell)
            cursor = self._cursors.get(cell)
            if cursor is None:  # from the stream's last entry on
                last = await self._redis.xrevrange(stream, count=1)
                self._cursors[cell] = last[0][0] if last else b"0-0"
                continue
            while True:
                reply = await self._redis.xread({stream: cursor}, count=_READ_COUNT)
                entries = reply[0][1] if reply else []
                for entry_id, fields in entries:
                    status = fields.get(keys.RUN_ENDED_STATUS_FIELD, b"")
                    self._ended[status.decode() if isinstance(status, bytes) else status] += 1
                    cursor = entry_id
                if len(entries) < _READ_COUNT:
                    break
            self._cursors[cell] = cursor
