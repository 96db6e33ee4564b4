"""Runs driven through RunStore directly (state tests without the outcome consumer), and what a
test reads back from Redis."""

from __future__ import annotations

import redis.asyncio as aioredis

from graflow_api.v1 import common_pb2, workflow_pb2
from graflow_runtime import keys
from graflow_runtime.graphs import graph_hash
from graflow_runtime.runids import new_run_id, run_cell
from graflow_runtime.streams import stream_id

from graflow_scheduler.graph.compiler import compile_spec
from graflow_scheduler.graph.plan import Plan
from graflow_scheduler.state.store import AppliedOutcome, OutcomeToApply, ParentLink, RunStore


async def runs_ended(redis: aioredis.Redis) -> list[tuple[str, str]]:
    """(run id, status) of every entry of gf:ended (what workers read), in order (the streams of
    every cell, in entry id order)."""
    entries = [entry for cell in keys.cells() for entry in await redis.xrange(keys.runs_ended(cell))]
    entries.sort(key=lambda entry: stream_id(entry[0]))
    return [
        (fields[keys.RUN_ENDED_RUN_FIELD].decode(), fields[keys.RUN_ENDED_STATUS_FIELD].decode())
        for _, fields in entries
    ]


class RunHarness:
    """Drives one run through RunStore directly (state tests without the consumer)."""

    def __init__(self, store: RunStore, plan: Plan, run_id: str) -> None:
        self.store = store
        self.plan = plan
        self.run_id = run_id

    @classmethod
    async def create(
        cls, store: RunStore, workflow: workflow_pb2.WorkflowSpec, **kwargs: object
    ) -> RunHarness:
        plan = compile_spec(workflow)
        parent = kwargs.get("parent")
        cell = run_cell(
            parent_run_id=parent.run_id if isinstance(parent, ParentLink) else "",
            idempotency_key=str(kwargs.get("idempotency_key", "")),
        )
        created = await store.create_run(
            plan,
            run_id=new_run_id(cell=cell),
            graph_hash=graph_hash(workflow),
            now_ms=1_000,
            **kwargs,  # type: ignore[arg-type]
        )
        return cls(store, plan, created.run_id)

    async def finish(
        self,
        node_id: str,
        attempt: int = 1,
        *,
        ok: bool = True,
        retry_delay_ms: int = -1,
        error: common_pb2.ErrorInfo | None = None,
        worker_lost: bool = False,
    ) -> AppliedOutcome:
        return await self.apply(
            node_id,
            attempt,
            ok=ok,
            error=error,
            retry_delay_ms=retry_delay_ms,
            closure_json=self.plan.closure_json(node_id, failed=not ok),
            worker_lost=worker_lost,
        )

    async def apply(
        self,
        node_id: str,
        attempt: int,
        *,
        ok: bool,
        closure_json: str,
        error: common_pb2.ErrorInfo | None = None,
        retry_delay_ms: int = -1,
        worker_lost: bool = False,
        flow_json: str = "",
    ) -> AppliedOutcome:
        """Apply one outcome of worker "w1" (a failure without ``error``: a retryable ValueError)."""
        info = error or common_pb2.ErrorInfo(type="ValueError", message=f"{node_id} broke")
        (result,) = await self.store.apply_outcomes(
            [
                OutcomeToApply(
                    run_id=self.run_id,
                    node_id=node_id,
                    attempt=attempt,
                    succeeded=ok,
                    error=b"" if ok else info.SerializeToString(),
                    worker_id="w1",
                    retry_delay_ms=retry_delay_ms,
                    closure_json=closure_json,
                    worker_lost=worker_lost,
                    flow_json=flow_json,
                )
            ],
            now_ms=2_000,
        )
        return result

    async def states(self) -> dict[str, str]:
        raw = await self.store.redis.hgetall(keys.run_state(self.run_id))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def meta(self) -> dict[str, bytes]:
        raw = await self.store.redis.hgetall(keys.run_meta(self.run_id))
        return {k.decode(): v for k, v in raw.items()}

    async def status(self) -> str:
        return (await self.meta())["status"].decode()

    async def events(self) -> list[tuple[str, str]]:
        """(type, node) of every event, in order."""
        entries = await self.store.redis.xrange(keys.run_events(self.run_id))
        return [(f[b"t"].decode(), f.get(b"n", b"").decode()) for _, f in entries]
