"""The workflow registry: workflow specs registered under a name (PutWorkflow), submitted by name
(SubmitRunRequest.workflow) from the console, the HTTP API and the SDK.

Three hashes under the global tag (graflow_runtime.keys.workflow_registry): the records (name ->
RegisteredWorkflow bytes), their summaries without the spec's nodes, edges and groups (what
ListWorkflows answers in one HGETALL, however large the specs), and the versions. One script
(put_workflow.lua) writes the three, so the version goes up by exactly one per registration, even
with replicas registering the same name at once. Deleting a name and registering it again starts
again at version 1.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis
from google.protobuf.message import DecodeError

from graflow_api.v1 import scheduler_pb2
from graflow_runtime import keys
from graflow_runtime.errors import NotFound, ResourceExhausted, ServiceError

from graflow_scheduler.state.scripts import PUT_WORKFLOW

# At most this many registered workflows (each PutWorkflow of a new name beyond is refused).
MAX_WORKFLOWS = 10_000



class WorkflowNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"no workflow is registered as {name[:128]!r}: register it with PutWorkflow "
            "(graflow workflows register MODULE:FLOW), or list them with ListWorkflows"
        )


def summary_of(record: scheduler_pb2.RegisteredWorkflow) -> scheduler_pb2.RegisteredWorkflow:
    """``record`` without its spec's nodes, edges and groups (ListWorkflows)."""
    summary = scheduler_pb2.RegisteredWorkflow()
    summary.CopyFrom(record)
    for field in ("nodes", "edges", "groups"):
        summary.spec.ClearField(field)
    return summary


class WorkflowRegistry:
    def __init__(self, redis: aioredis.Redis, *, max_workflows: int = MAX_WORKFLOWS) -> None:
        self.redis = redis
        self.max_workflows = max_workflows

    async def put(self, record: scheduler_pb2.RegisteredWorkflow) -> scheduler_pb2.RegisteredWorkflow:
        """Store ``record`` (validated by the caller) with the next version and the time now."""
        record.updated_at_ms = int(time.time() * 1000)
        record.ClearField("version")
        version = await PUT_WORKFLOW.run(
            self.redis,
            list(keys.workflow_registry()),
            [record.name, record.SerializeToString(), summary_of(record).SerializeToString(),
             self.max_workflows],
        )
        if int(version) < 0:
            raise ResourceExhausted(
                f"{self.max_workflows:,} workflows are registered, the limit: delete some "
                "(DeleteWorkflow) before registering a new name"
            )
        record.version = int(version)
        return record

    async def get(self, name: str) -> scheduler_pb2.RegisteredWorkflow:
        raw = await self.redis.hget(keys.workflow_registry()[0], name)
        if raw is None:
            raise WorkflowNotFound(name)
        return _parse(raw, name)

    async def list(self) -> list[scheduler_pb2.RegisteredWorkflow]:
        """Every registered workflow's summary, by name."""
        raw = await self.redis.hgetall(keys.workflow_registry()[1])
        return [_parse(value, name.decode()) for name, value in sorted(raw.items())]

    async def delete(self, name: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in keys.workflow_registry():
                pipe.hdel(key, name)
            deleted, _, _ = await pipe.execute()
        if not deleted:
            raise WorkflowNotFound(name)


def _parse(raw: bytes, name: str) -> scheduler_pb2.RegisteredWorkflow:
    try:
        return scheduler_pb2.RegisteredWorkflow.FromString(raw)
    except DecodeError as exc:
        # Only the scheduler writes these; a record that does not decode was written by hand.
        raise ServiceError(
            f"the registered workflow {name!r} is unreadable ({exc}): register it again"
        ) from exc
