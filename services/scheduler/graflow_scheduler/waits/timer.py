"""The wait timer (a :class:`BackgroundLoop`), every ``interval_s``: the deadlines of feedback
requests that are due, the parents of child runs that ended, and the children of canceled runs.

Every step is an idempotent script call: replicas may run the timer side by side, and a crash
between two steps is repaired by the next pass.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine
from typing import Any

import redis.asyncio as aioredis
import structlog

from graflow_runtime import keys
from graflow_runtime.grpc_client import DownstreamUnavailable
from graflow_runtime.loops import BackgroundLoop
from graflow_runtime.redis_client import REDIS_UNAVAILABLE

from graflow_scheduler.waits.children import ChildRuns
from graflow_scheduler.waits.feedback import FeedbackRequests, parse_member

log = structlog.get_logger(__name__)

TIMER_BATCH = 200


class WaitTimer(BackgroundLoop):
    name = "wait-timer"

    def __init__(
        self,
        redis: aioredis.Redis,
        feedback: FeedbackRequests,
        children: ChildRuns,
        *,
        interval_s: float = 0.5,
    ) -> None:
        self.redis = redis
        self.feedback = feedback
        self.children = children
        self.interval_s = interval_s
        super().__init__()

    async def step(self) -> float:
        """One timer pass; the loop sleeps ``interval_s`` before the next (backs off on errors)."""
        await self.tick()
        return self.interval_s

    async def tick(self) -> None:
        """One pass: due deadlines, ended child runs, children of canceled runs (each cell's, read
        in one round trip). An entry that fails is logged and left for the next pass; the others go
        on."""
        now = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for cell in keys.cells():
                pipe.zrange(keys.wait_deadlines(cell), 0, now, byscore=True, offset=0, num=TIMER_BATCH)
                pipe.zrange(keys.children_ended(cell), 0, TIMER_BATCH - 1)
                pipe.zrange(keys.children_to_cancel(cell), 0, TIMER_BATCH - 1)
            replies = await pipe.execute()
        due = [member for reply in replies[0::3] for member in reply]
        ended = [member for reply in replies[1::3] for member in reply]
        canceled = [member for reply in replies[2::3] for member in reply]
        steps: list[tuple[str, str, Coroutine[Any, Any, None]]] = [
            *(("deadline", m.decode(), self.feedback.time_out(*parse_member(m), now)) for m in due),
            *(("ended child run", r.decode(), self.children.resume_parent(r.decode())) for r in ended),
            *(
                ("children of a canceled run", r.decode(), self.children.cancel_children(r.decode()))
                for r in canceled
            ),
        ]
        for index, (what, entry, step) in enumerate(steps):
            try:
                await step
            except (DownstreamUnavailable, *REDIS_UNAVAILABLE):
                for _, _, left in steps[index + 1 :]:
                    left.close()
                raise
            except Exception:  # noqa: BLE001 - one bad entry must not stall the others
                log.exception("wait timer entry failed; retried next pass", entry_kind=what, entry=entry)
