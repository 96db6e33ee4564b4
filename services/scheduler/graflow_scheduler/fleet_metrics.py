"""The scheduler's fleet-wide gauges: runs and waiting feedback requests over every cell, measured
by the replica holding the lease (graflow_runtime.fleet)."""

from __future__ import annotations

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
)


async def measure(redis: aioredis.Redis) -> Measurement:
    pipe = redis.pipeline(transaction=False)
    for cell in keys.cells():
        pipe.scard(keys.active_runs(cell))
        pipe.zcard(keys.runs_index(cell))
        pipe.zcard(keys.feedback_pending(cell))
    replies = await pipe.execute()
    active, retained, waiting = (float(sum(replies[i::3])) for i in range(3))
    return {
        "graflow_runs": {("active",): active, ("retained",): retained},
        "graflow_feedback_waiting": {(): waiting},
    }
