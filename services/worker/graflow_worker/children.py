"""Child runs for ``TaskContext.children``, backed by the scheduler's SubmitRun and GetRun and the
result-store's GetResults.

Like the channel (:mod:`graflow_worker.channel`), task code calls it from its worker thread and
each RPC runs on the event loop through a :class:`Downstream` (deadline + breaker).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from graflow import payload
from graflow.errors import WorkflowDefinitionError
from graflow_api.v1 import result_store_pb2 as rs_pb2
from graflow_api.v1 import result_store_pb2_grpc as rs_grpc
from graflow_api.v1 import scheduler_pb2, scheduler_pb2_grpc, workflow_pb2
from graflow_runtime.grpc_client import Downstream

from graflow_worker.channel import call_from_thread


class SchedulerChildren:
    """:class:`graflow.context.ChildRunsBackend` for the tasks of one run."""

    def __init__(
        self,
        run_id: str,
        *,
        scheduler: Downstream,
        scheduler_stub: scheduler_pb2_grpc.SchedulerStub,
        result_store: Downstream,
        result_store_stub: rs_grpc.ResultStoreStub,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._run_id = run_id
        self._scheduler = scheduler
        self._scheduler_stub = scheduler_stub
        self._result_store = result_store
        self._result_store_stub = result_store_stub
        self._loop = loop

    def _call(self, downstream: Downstream, method: Any, request: Any) -> Any:
        return call_from_thread(
            self._loop, downstream.call(method, request), downstream.timeout_s, "ctx.run_child"
        )

    def submit(
        self, spec: workflow_pb2.WorkflowSpec, idempotency_key: str, labels: dict[str, str], parent_node: str
    ) -> scheduler_pb2.SubmitRunResponse:
        request = scheduler_pb2.SubmitRunRequest(
            spec=spec,
            idempotency_key=idempotency_key,
            labels=labels,
            parent=scheduler_pb2.ParentRef(run_id=self._run_id, node_id=parent_node),
        )
        try:
            return self._call(self._scheduler, self._scheduler_stub.SubmitRun, request)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise WorkflowDefinitionError(f"child workflow rejected: {exc.details()}") from None
            raise

    def get_run(self, run_id: str) -> scheduler_pb2.Run:
        return self._call(
            self._scheduler, self._scheduler_stub.GetRun, scheduler_pb2.GetRunRequest(run_id=run_id)
        )

    def results(self, run_id: str, node_ids: list[str]) -> dict[str, Any]:
        request = rs_pb2.GetResultsRequest(run_id=run_id, node_ids=node_ids)
        response = self._call(self._result_store, self._result_store_stub.GetResults, request)
        return {r.node_id: payload.decode(r.value) for r in response.results}
