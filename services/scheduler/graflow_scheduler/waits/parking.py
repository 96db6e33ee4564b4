"""Parking: what a WAITING outcome parks its node on (``apply_outcome.lua`` with ``waits.lua``), or
the error that fails the node instead (docs/architecture.md, "Waits")."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from graflow_api.v1 import common_pb2, feedback_pb2, messages_pb2
from graflow_runtime import keys
from graflow_runtime.runids import is_run_id

from graflow_scheduler.state.store import WaitToApply
from graflow_scheduler.waits.validation import CHILD_PREFIX, request_problem


class Parking:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def prepare(
        self, outcome: messages_pb2.TaskOutcome, cycle: int
    ) -> WaitToApply | common_pb2.ErrorInfo:
        """What a WAITING outcome parks its node on, or the error that fails the node instead."""
        which = outcome.wait.WhichOneof("kind")
        if which == "feedback":
            request = feedback_pb2.FeedbackRequest()
            request.CopyFrom(outcome.wait.feedback)
            problem = request_problem(request)
            if problem:
                return common_pb2.ErrorInfo(type="InvalidFeedbackRequest", message=problem)
            now = int(time.time() * 1000)
            request.run_id, request.node_id = outcome.run_id, outcome.node_id
            request.attempt, request.cycle, request.created_at_ms = outcome.attempt, cycle, now
            request.deadline_ms = now + request.timeout_ms if request.timeout_ms else 0
            request.ClearField("state")
            request.ClearField("response")
            return WaitToApply(
                request.request_id,
                request.SerializeToString(),
                feedback=True,
                deadline_ms=request.deadline_ms,
            )
        if which == "child_run_id":
            child = outcome.wait.child_run_id
            parent = (
                await self.redis.hmget(keys.run_meta(child), ["parent", "parent_node"])
                if is_run_id(child)
                else []
            )
            if parent != [outcome.run_id.encode(), outcome.node_id.encode()]:
                return common_pb2.ErrorInfo(
                    type="InvalidWait",
                    message=f"run {child[:64]!r} is not a child run started by node "
                    f"{outcome.node_id!r} of this run",
                )
            wait_id = CHILD_PREFIX + child
            return WaitToApply(wait_id, wait_id.encode(), feedback=False, child_meta_key=keys.run_meta(child))
        return common_pb2.ErrorInfo(
            type="InvalidWait", message="a WAITING outcome must say what it waits for"
        )
