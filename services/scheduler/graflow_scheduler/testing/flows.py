"""Test helpers for dynamic control flow: directive builders and a run driven through RunStore
with directives, as the outcome consumer does."""

from __future__ import annotations

import json

from graflow_api.v1 import common_pb2, messages_pb2, workflow_pb2
from graflow_runtime import keys

from graflow_scheduler.graph.compiler import Limits
from graflow_scheduler.graph.directives import prepare
from graflow_scheduler.graph.plan import Plan
from graflow_scheduler.state.dynamic_nodes import DynamicNodes
from graflow_scheduler.state.store import AppliedOutcome, RunStore
from graflow_scheduler.testing.runs import RunHarness

Directive = messages_pb2.Directive
SUCCEEDED = messages_pb2.TaskOutcome.STATUS_SUCCEEDED
FAILED = messages_pb2.TaskOutcome.STATUS_FAILED


def next_task(task_type: str, node_id: str = "", *, goto: bool = False, **args: object) -> Directive:
    return Directive(
        next_task=messages_pb2.NextTask(
            node_id=node_id,
            task_type=task_type,
            goto=goto,
            args_json=json.dumps(args).encode() if args else b"",
        )
    )


def goto(node_id: str) -> Directive:
    return Directive(goto=messages_pb2.Goto(node_id=node_id))


def iterate(data: object = None) -> Directive:
    raw = b"" if data is None else json.dumps(data).encode()
    return Directive(next_iteration=messages_pb2.NextIteration(data_json=raw))


def terminate(message: str = "") -> Directive:
    return Directive(terminate=messages_pb2.Terminate(message=message))


def cancel(message: str = "") -> Directive:
    return Directive(cancel=messages_pb2.Cancel(message=message))


def loop_edge(src: str, dst: str) -> workflow_pb2.EdgeSpec:
    return workflow_pb2.EdgeSpec(from_id=src, to_id=dst, loop=True)


class FlowRun(RunHarness):
    """One run whose outcomes carry directives; nodes added at run time are read back from Redis."""

    def __init__(self, store: RunStore, plan: Plan, run_id: str) -> None:
        super().__init__(store, plan, run_id)
        self.dynamic = DynamicNodes(store.redis)

    async def finish(
        self,
        node_id: str,
        *directives: Directive,
        ok: bool = True,
        attempt: int | None = None,
        error: common_pb2.ErrorInfo | None = None,
    ) -> AppliedOutcome:
        """Apply an outcome of ``node_id`` (its current attempt unless given), with ``directives``."""
        if attempt is None:
            attempt = int(await self.store.redis.hget(keys.run_attempts(self.run_id), node_id) or 1)
        outcome = messages_pb2.TaskOutcome(
            run_id=self.run_id,
            node_id=node_id,
            attempt=attempt,
            status=SUCCEEDED if ok else FAILED,
            directives=directives,
        )
        found = await self.dynamic.load(self.run_id, [node_id], self.plan)
        flow = prepare(outcome, self.plan, found.get(node_id), Limits())
        succeeded = ok and flow.error is None
        return await self.apply(
            node_id,
            attempt,
            ok=succeeded,
            error=flow.error or error,
            closure_json=flow.closure_json(failed=not succeeded),
            flow_json=flow.flow_json,
        )

    async def error(self) -> common_pb2.ErrorInfo:
        return common_pb2.ErrorInfo.FromString((await self.meta())["error"])

    async def attempt(self, node_id: str) -> int:
        return int(await self.store.redis.hget(keys.run_attempts(self.run_id), node_id) or 0)

    async def events(self, kind: str) -> list[tuple[str, str]]:
        """(node, message) of the events of one type, in order."""
        entries = await self.store.redis.xrange(keys.run_events(self.run_id))
        return [
            (f.get(b"n", b"").decode(), f.get(b"m", b"").decode())
            for _, f in entries
            if f[b"t"].decode() == kind
        ]


def ready(result: AppliedOutcome) -> list[str]:
    return [node for node, _attempt in result.ready]

