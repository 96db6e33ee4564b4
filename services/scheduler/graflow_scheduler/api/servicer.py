"""The client API (``graflow_api.v1.Scheduler``): submit, get, list, watch and cancel runs; list,
get and answer feedback requests (graflow_scheduler.waits.feedback).

Handlers raise the scheduler's errors (graflow_scheduler.errors) and graflow_runtime's; the
server's interceptor turns them into their gRPC status."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Mapping

import grpc
import structlog
from redis.exceptions import RedisError

from graflow_api.v1 import common_pb2, feedback_pb2, scheduler_pb2, scheduler_pb2_grpc
from graflow_runtime.dispatch import Dispatcher, InvalidDelivery, QueueStreamsVanishing
from graflow_runtime.errors import InvalidRequest, ServiceError, Unavailable
from graflow_runtime.graphs import graph_hash
from graflow_runtime.grpc_client import DownstreamUnavailable
from graflow_runtime.limits import MAX_WAIT_MS
from graflow_runtime.names import NODE_ID_RULE, is_node_id
from graflow_runtime.runids import new_run_id, run_cell, run_id_problem
from graflow_runtime.telemetry import ensure_trace, span

from graflow_scheduler.api.run_results import RunResults
from graflow_scheduler.api.workflow_calls import WorkflowCalls
from graflow_scheduler.downstream.plan_cache import PlanCache, RunGraphs, compile_off_loop
from graflow_scheduler.errors import GraphNotFound, RunNotFound, SpecError
from graflow_scheduler.graph.compiler import Limits
from graflow_scheduler.graph.plan import Plan
from graflow_scheduler.state.deliveries import delivery
from graflow_scheduler.state.reader import RunFilters, RunReader
from graflow_scheduler.state.store import ParentLink, RunStore
from graflow_scheduler.state.views import (
    ENDED_STATUSES,
    TERMINAL_EVENT_TYPES,
    event_from_entry,
    event_type,
    is_terminal,
    is_terminal_entry,
)
from graflow_scheduler.state.workflows import WorkflowRegistry
from graflow_scheduler.waits.children import ChildRuns
from graflow_scheduler.waits.feedback import FeedbackRequests

log = structlog.get_logger(__name__)

IDEMPOTENCY_KEY_MAX = 256
LABELS_MAX = 64
LABEL_KEY_MAX = 128
LABEL_VALUE_MAX = 1024
LIST_DEFAULT, LIST_MAX = 50, 1000
WATCH_BATCH = 500
REASON_MAX = 1024
_CURSOR = re.compile(r"\d{1,20}-\d{1,20}")
# A terminal-only watch of an ended run finds its terminal event among this many newest events.
LAST_EVENTS = 16


def _now_ms() -> int:
    return int(time.time() * 1000)


def _wait_problem(wait_ms: int) -> str | None:
    if wait_ms > MAX_WAIT_MS:
        return f"wait_ms is {wait_ms}; the limit is {MAX_WAIT_MS} (MAX_WAIT_MS): wait again with WaitRun"
    return None


def _request_problem(request: scheduler_pb2.SubmitRunRequest) -> str | None:
    wait_problem = _wait_problem(request.wait_ms)
    if wait_problem:
        return wait_problem
    if len(request.idempotency_key) > IDEMPOTENCY_KEY_MAX:
        return (
            f"idempotency_key is {len(request.idempotency_key)} characters long; "
            f"the limit is {IDEMPOTENCY_KEY_MAX}"
        )
    return _labels_problem(request.labels)


def _labels_problem(labels: Mapping[str, str]) -> str | None:
    if len(labels) > LABELS_MAX:
        return f"{len(labels)} labels; the limit is {LABELS_MAX}"
    for key, value in labels.items():
        if not key or len(key) > LABEL_KEY_MAX or len(value) > LABEL_VALUE_MAX:
            return (
                f"label {key[:64]!r}: keys need 1-{LABEL_KEY_MAX} characters, values at most "
                f"{LABEL_VALUE_MAX}"
            )
    return None


def _check_run_id(run_id: str) -> None:
    problem = run_id_problem(run_id)
    if problem:
        raise InvalidRequest(problem)


def _parent(request: scheduler_pb2.SubmitRunRequest) -> ParentLink | None:
    if not request.HasField("parent"):
        return None
    parent = request.parent
    _check_run_id(parent.run_id)
    if not is_node_id(parent.node_id):
        raise InvalidRequest(f"parent.node_id {parent.node_id[:64]!r} is invalid: {NODE_ID_RULE}")
    return ParentLink(parent.run_id, parent.node_id)


class SchedulerServicer(WorkflowCalls, scheduler_pb2_grpc.SchedulerServicer):
    def __init__(
        self,
        store: RunStore,
        reader: RunReader,
        watch_reader: RunReader,
        plans: PlanCache,
        graphs: RunGraphs,
        dispatcher: Dispatcher,
        feedback: FeedbackRequests,
        children: ChildRuns,
        results: RunResults,
        registry: WorkflowRegistry,
        *,
        limits: Limits,
        watch_block_ms: int = 5000,
    ) -> None:
        self.store = store
        self.reader = reader
        self.watch_reader = watch_reader
        self.plans = plans
        self.graphs = graphs
        self.dispatcher = dispatcher
        self.feedback = feedback
        self.children = children
        self.results = results
        self.registry = registry
        self.limits = limits
        self.watch_block_ms = watch_block_ms

    async def _plan_or_none(self, graph: str) -> Plan | None:
        try:
            return await self.plans.get(graph)
        except (DownstreamUnavailable, GraphNotFound, SpecError) as exc:
            log.warning("run shown without node kinds: plan unavailable", graph_hash=graph, error=str(exc))
            return None

    async def SubmitRun(  # noqa: N802 - gRPC method name
        self, request: scheduler_pb2.SubmitRunRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.SubmitRunResponse:
        # The run's cell: its parent's, else its idempotency key's, else any (keys.py, cells).
        run_id = new_run_id(
            cell=run_cell(parent_run_id=request.parent.run_id, idempotency_key=request.idempotency_key)
        )
        if not request.wait_ms:
            return await self._submit(request, run_id)
        # Registered before the run exists: its end cannot come before, no status to read.
        with self.results.ends.waiting(run_id) as ended:
            response = await self._submit(request, run_id)
            if response.created:
                result = await self.results.wait_registered(run_id, ended, request.wait_ms)
        if not response.created:  # the idempotency key named an existing run
            result = await self.results.wait(response.run_id, request.wait_ms)
        response.result.CopyFrom(result)
        return response

    async def WaitRun(  # noqa: N802
        self, request: scheduler_pb2.WaitRunRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.RunResult:
        _check_run_id(request.run_id)
        problem = _wait_problem(request.wait_ms)
        if problem:
            raise InvalidRequest(problem)
        return await self.results.wait(request.run_id, request.wait_ms)

    async def _submit(
        self, request: scheduler_pb2.SubmitRunRequest, run_id: str
    ) -> scheduler_pb2.SubmitRunResponse:
        problem = _request_problem(request)
        if problem:
            raise InvalidRequest(problem)
        spec, channel = await self.submission(request)
        try:
            with span("compile"):
                plan = await compile_off_loop(spec, self.limits)
        except SpecError as exc:
            raise SpecError(f"invalid workflow: {exc}") from exc
        parent = _parent(request)
        # Queues beyond MAX_QUEUES refuse the submit (RESOURCE_EXHAUSTED) before anything is stored.
        try:
            await self.dispatcher.ensure_queues(plan.queues)
        except RedisError as exc:
            log.warning("queues not made yet; the dispatch will try again", error=str(exc))
        digest = graph_hash(spec)
        try:
            await self.plans.store(digest, spec, plan)
        except DownstreamUnavailable as exc:
            raise Unavailable(f"cannot store the graph: {exc}; retry later") from exc
        except grpc.aio.AioRpcError as exc:
            raise ServiceError(f"result-store rejected the graph: {exc.details()}") from exc
        # A parent that ended or does not exist: ParentEnded, ParentNotFound (nothing created).
        created = await self.store.create_run(
            plan,
            run_id=run_id,
            graph_hash=digest,
            now_ms=_now_ms(),
            idempotency_key=request.idempotency_key,
            labels=dict(request.labels),
            parent=parent,
            channel=channel,
        )
        if not created.created:
            existing = (await self.reader.graph_hashes([created.run_id]))[created.run_id] or ""
            log.info("submit matched an existing run", run_id=created.run_id)
            return scheduler_pb2.SubmitRunResponse(
                run_id=created.run_id,
                created=False,
                graph_hash=existing,
                sink_node_ids=plan.sinks if existing == digest else (),
            )
        self.graphs.remember(run_id, digest)
        # The run's trace starts here (unless the call carries one): its envelopes carry it on.
        with ensure_trace("graflow.run", {"graflow.run_id": run_id, "graflow.workflow": plan.name}):
            log.info(
                "run created", run_id=run_id, workflow=plan.name, nodes=len(plan.nodes), graph_hash=digest
            )
            try:
                # The roots' envelopes carry the context of this span.
                with span("dispatch", {"graflow.run_id": run_id}):
                    await self.dispatcher.dispatch([delivery(plan, run_id, root, 1) for root in plan.roots])
            except (InvalidDelivery, QueueStreamsVanishing, RedisError) as exc:
                # The run exists with its roots READY: the recovery sweep dispatches them.
                log.warning(
                    "roots not dispatched yet; the recovery sweep will", run_id=run_id, error=str(exc)
                )
        return scheduler_pb2.SubmitRunResponse(
            run_id=run_id, created=True, graph_hash=digest, sink_node_ids=plan.sinks
        )

    async def GetRun(  # noqa: N802
        self, request: scheduler_pb2.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.Run:
        _check_run_id(request.run_id)
        return await self.reader.get_run(request.run_id, self._plan_or_none)

    async def ListRuns(  # noqa: N802
        self, request: scheduler_pb2.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ListRunsResponse:
        limit = min(request.limit or LIST_DEFAULT, LIST_MAX)
        status = None
        if request.status not in common_pb2.RunStatus.values():
            known = ", ".join(name for name, number in common_pb2.RunStatus.items() if number)
            raise InvalidRequest(f"status {request.status} is not a RunStatus: use one of {known}, or none")
        if request.status != common_pb2.RUN_STATUS_UNSPECIFIED:
            status = common_pb2.RunStatus.Name(request.status).removeprefix("RUN_STATUS_")
        after, before = request.created_after_ms, request.created_before_ms
        if after < 0 or before < 0 or (after and before and after > before):
            raise InvalidRequest(
                f"created_after_ms {after} and created_before_ms {before}: each is Unix ms (0 = no "
                "bound) and created_after_ms may not be later than created_before_ms"
            )
        problem = _labels_problem(request.labels)
        if problem:
            raise InvalidRequest(problem)
        runs, token = await self.reader.list_runs(
            limit=limit,
            status=status,
            page_token=request.page_token,
            filters=RunFilters(
                workflow_name=request.workflow_name,
                labels=dict(request.labels),
                created_after_ms=after,
                created_before_ms=before,
            ),
        )
        return scheduler_pb2.ListRunsResponse(runs=runs, next_page_token=token)

    async def WatchRun(  # noqa: N802
        self, request: scheduler_pb2.WatchRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[scheduler_pb2.RunEvent]:
        run_id = request.run_id
        _check_run_id(run_id)
        if request.cursor and not _CURSOR.fullmatch(request.cursor):
            raise InvalidRequest(
                f"cursor {request.cursor[:64]!r} is malformed: "
                "pass a RunEvent.cursor (like '1700000000000-0')"
            )
        wanted = frozenset(request.types)
        cursor = request.cursor or "0-0"
        if wanted and wanted <= TERMINAL_EVENT_TYPES:
            # Only the end is wanted: wait for it on the process's reader of gf:ended, woken by
            # the end alone rather than by every event of the run.
            terminal = await self._terminal_event(run_id, cursor, context)
            if terminal is not None and terminal.type in wanted:
                yield terminal
            return
        entries: list[tuple[bytes, dict[bytes, bytes]]] | None = await self.watch_reader.read_events(
            run_id, cursor, count=WATCH_BATCH
        )
        # A run with events exists (they expire with it); without any, ask its status.
        if not entries and await self.watch_reader.status(run_id) is None:
            raise RunNotFound(run_id)
        with structlog.contextvars.bound_contextvars(run_id=run_id):
            while not context.done():
                if entries is None:
                    entries = await self.watch_reader.read_events(run_id, cursor, count=WATCH_BATCH)
                if not entries:
                    status = await self.watch_reader.status(run_id)
                    if status is None:
                        return  # expired meanwhile
                    if status in ENDED_STATUSES:
                        # The terminal event was appended with the status: read up to it.
                        entries = await self.watch_reader.read_events(run_id, cursor, count=WATCH_BATCH)
                        if not entries:
                            return
                    else:
                        entries = await self.watch_reader.read_events(
                            run_id, cursor, count=WATCH_BATCH, block_ms=self.watch_block_ms
                        )
                for entry_id, fields in entries:
                    cursor = entry_id.decode()
                    if wanted and event_type(fields) not in wanted:
                        if is_terminal_entry(fields):
                            return
                        continue
                    event = event_from_entry(run_id, entry_id, fields)
                    yield event
                    if is_terminal(event):
                        return
                # A short batch reached the end of the stream: next, wait for new events (reading
                # again at once would find nothing); a full one may have more behind it.
                entries = [] if len(entries) < WATCH_BATCH else None

    async def _terminal_event(
        self, run_id: str, cursor: str, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.RunEvent | None:
        """The run's terminal event after ``cursor`` once the run ended (None when it comes before
        the cursor, or the run expired meanwhile). Raises RunNotFound for an unknown run."""
        with self.results.ends.waiting(run_id) as ended:
            status = await self.watch_reader.status(run_id)
            if status is None:
                raise RunNotFound(run_id)
            while status not in ENDED_STATUSES and not context.done():
                with contextlib.suppress(TimeoutError):
                    # Re-checked at least every watch_block_ms (a run that expired meanwhile).
                    await asyncio.wait_for(asyncio.shield(ended), self.watch_block_ms / 1000)
                status = await self.watch_reader.status(run_id)
                if status is None:
                    return None
        # The terminal event is appended with the end, as the run's last event.
        for entry_id, fields in await self.watch_reader.last_events(run_id, cursor, count=LAST_EVENTS):
            if is_terminal_entry(fields):
                return event_from_entry(run_id, entry_id, fields)
        return None

    async def CancelRun(  # noqa: N802
        self, request: scheduler_pb2.CancelRunRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.Run:
        _check_run_id(request.run_id)
        reason = request.reason[:REASON_MAX] or "canceled by request"
        status = await self.store.cancel_run(request.run_id, reason, now_ms=_now_ms())
        log.info("run cancel requested", run_id=request.run_id, status=status)
        self.graphs.forget(request.run_id)
        if status == "CANCELED":
            # Workers learn it from gf:ended, written by cancel_run with the end itself.
            await self.children.cancel_children(request.run_id)
        return await self.reader.get_run(request.run_id, self._plan_or_none)

    async def ListFeedback(  # noqa: N802
        self, request: scheduler_pb2.ListFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ListFeedbackResponse:
        if request.run_id:
            _check_run_id(request.run_id)
        pending = await self.feedback.list_pending(request.run_id, request.limit)
        return scheduler_pb2.ListFeedbackResponse(requests=pending)

    async def GetFeedback(  # noqa: N802
        self, request: scheduler_pb2.GetFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> feedback_pb2.FeedbackRequest:
        _check_run_id(request.run_id)
        return await self.feedback.get(request.run_id, request.request_id)

    async def RespondFeedback(  # noqa: N802
        self, request: scheduler_pb2.RespondFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> feedback_pb2.FeedbackRequest:
        _check_run_id(request.run_id)
        return await self.feedback.respond(request.run_id, request.request_id, request.response)
