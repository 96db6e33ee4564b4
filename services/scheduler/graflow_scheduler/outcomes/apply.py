"""One batch of outcomes: decode (undecodable ones become dead letters), find each run's plan,
apply them all in one pipeline, enqueue what they released in one round trip
(graflow_runtime.dispatch), acknowledge.

A batch is acknowledged only after its dispatch succeeded: on a Redis error (or DownstreamUnavailable
from the result-store, fetching a plan) nothing is acknowledged and the caller applies the same
batch again, which is safe because a repeated outcome changes nothing and returns the nodes it
released, whose dispatch is deduplicated by the dispatch record.

An outcome the coordinator reports for an attempt lost with its worker (``worker_lost``, error
``WorkerLost``) is retried at once as attempt+1 and does not consume the retry budget: only real
failures count (``attempt - lost attempts`` against ``max_attempts``). Stale and duplicate
outcomes change nothing; each one is logged and counted in :class:`ConsumerStats`.

Dynamic control flow (graflow_scheduler.graph.directives, flow.lua): an outcome's directives go
to the script with it; nodes added at run time are found in the run's ``dyn`` hash
(graflow_scheduler.state.dynamic_nodes); re-runs are dispatched with their cycle and iteration
data; the child runs of a run a task canceled are canceled.

A result carried inline in a success (``TaskOutcome.result``, small results) is stored in the run's
result hash by the script that applies the outcome, only when it applies it (state/store.py). An
inline result on another status, naming another node or attempt, or over
``MAX_INLINE_RESULT_BYTES`` makes the outcome invalid (dead-lettered).

A STATUS_CANCELED outcome (invariant 11: a worker skipped a delivery of a run that had ended, or a
body stopped on the run's end) changes nothing but the ended run's counters ``skipped`` /
``stopped`` (run_ended_outcome.lua). One for a run that has not ended (a worker wrongly believed
it ended) must neither fail the node nor strand it: it is applied as an attempt lost with its
worker (retryable ``RunEnded``, ``worker_lost``), so the node is redelivered at once as attempt+1,
fenced by the attempt like any outcome, without using the retry budget. Bounded: once the node
was lost ``MAX_REFUSALS`` times, such an outcome fails the node (``RunEnded``, not retryable)
instead of looping.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import structlog
from google.protobuf.message import DecodeError
from prometheus_client import Histogram
from redis.exceptions import RedisError

from graflow_api.v1 import common_pb2, coordinator_pb2, messages_pb2
from graflow_runtime import keys, metrics
from graflow_runtime.dispatch import Dispatcher, InvalidDelivery
from graflow_runtime.grpc_client import DownstreamUnavailable
from graflow_runtime.limits import MAX_INLINE_RESULT_BYTES
from graflow_runtime.redis_client import REDIS_UNAVAILABLE
from graflow_runtime.runids import is_run_id
from graflow_runtime.signing import UNSIGNED, BusKeys, Kind
from graflow_runtime.telemetry import SpanBatch, trace_context

from graflow_scheduler.downstream.plan_cache import PlanCache, RunGraphs
from graflow_scheduler.errors import GraphNotFound, SpecError
from graflow_scheduler.graph.compiler import Limits
from graflow_scheduler.graph.directives import PreparedFlow, prepare
from graflow_scheduler.graph.plan import NodeKind, Plan
from graflow_scheduler.outcomes.retry import retry_delay_ms
from graflow_scheduler.outcomes.stream import DeadOutcome, Entry, OutcomeStream
from graflow_scheduler.state.deliveries import delivery
from graflow_scheduler.state.dynamic_nodes import DynamicNodes
from graflow_scheduler.state.store import AppliedOutcome, OutcomeToApply, RunStore, WaitToApply
from graflow_scheduler.state.views import LIVE_STATUSES
from graflow_scheduler.waits.children import ChildRuns
from graflow_scheduler.waits.parking import Parking

log = structlog.get_logger(__name__)

_STATUSES = {
    messages_pb2.TaskOutcome.STATUS_SUCCEEDED,
    messages_pb2.TaskOutcome.STATUS_FAILED,
    messages_pb2.TaskOutcome.STATUS_WAITING,
    messages_pb2.TaskOutcome.STATUS_CANCELED,
}
_WAITING = messages_pb2.TaskOutcome.STATUS_WAITING
_CANCELED = messages_pb2.TaskOutcome.STATUS_CANCELED
# Error type of a STATUS_CANCELED outcome whose delivery was skipped (the body never started).
RUN_ENDED = "RunEnded"
# A live run's node refused (STATUS_CANCELED) after this many lost attempts fails instead of being
# redelivered again (the coordinator's default MAX_DELIVERIES for poison messages).
MAX_REFUSALS = 5
OUTCOME_BATCH_SIZE = Histogram(
    "graflow_scheduler_outcome_batch_size",
    "Outcomes in one batch the scheduler applied (read from one cell's outcome stream).",
    buckets=metrics.BATCH_BUCKETS,
    registry=metrics.REGISTRY,
)
OUTCOME_APPLY_SECONDS = Histogram(
    "graflow_scheduler_outcome_apply_seconds",
    "Time to apply one batch of outcomes: decode, apply in Redis, dispatch what became ready, ack.",
    buckets=metrics.LATENCY_BUCKETS,
    registry=metrics.REGISTRY,
)

# Errors that fail a whole batch, which is kept and retried: Redis or a downstream, not an outcome.
_BATCH_ERRORS = (DownstreamUnavailable, RedisError, *REDIS_UNAVAILABLE)
_MISSING_ERROR = common_pb2.ErrorInfo(
    type="TaskFailed", message="the worker reported a failure without error details", retryable=True
)


@dataclass
class ConsumerStats:
    batches: int = 0
    applied: int = 0
    duplicates: int = 0
    stale: int = 0
    ignored: int = 0  # run ended, unknown run or node
    skipped: int = 0  # deliveries of ended runs the workers skipped (STATUS_CANCELED, RunEnded)
    stopped: int = 0  # attempts that stopped on their run's end (STATUS_CANCELED, started)
    worker_lost: int = 0  # attempts lost with their worker, applied (redelivered as attempt+1)
    dead_lettered: int = 0
    dispatched: int = 0
    dispatch_duplicates: int = 0  # deliveries dispatched again (a repeated outcome), not enqueued
    redis_errors: int = 0


def decode_outcome(
    entry_id: bytes, fields: dict[bytes, bytes], bus_keys: BusKeys = UNSIGNED
) -> messages_pb2.TaskOutcome | DeadOutcome:
    """The outcome of a stream entry, or why it is dead-lettered. Its signature is checked before
    anything is decoded: a badly signed outcome is never applied (``BadSignature``)."""
    raw = fields.get(keys.OUTCOME_FIELD)
    if raw is None:
        return DeadOutcome(entry_id, f"undecodable outcome: no field {keys.OUTCOME_FIELD.decode()!r}", b"")
    bad_signature = bus_keys.fields_problem(Kind.OUTCOME, raw, fields)
    if bad_signature:
        return DeadOutcome(entry_id, bad_signature, raw)
    outcome = messages_pb2.TaskOutcome()
    try:
        outcome.ParseFromString(raw)
    except DecodeError as exc:
        return DeadOutcome(entry_id, f"undecodable outcome: {exc}", raw)
    problem = None
    if not is_run_id(outcome.run_id):
        problem = f"run_id {outcome.run_id[:64]!r} is not a run id"
    elif not outcome.node_id:
        problem = "node_id is empty"
    elif outcome.attempt < 1:
        problem = "attempt is 0"
    elif outcome.status not in _STATUSES:
        problem = f"status {outcome.status} is not SUCCEEDED, FAILED, WAITING or CANCELED"
    elif outcome.HasField("result"):
        problem = _inline_result_problem(outcome)
    if problem:
        return DeadOutcome(entry_id, f"invalid outcome: {problem}", raw, outcome)
    return outcome


def _inline_result_problem(outcome: messages_pb2.TaskOutcome) -> str | None:
    """What is wrong with the result an outcome carries inline, if anything (it is stored as is)."""
    result = outcome.result
    if outcome.status != messages_pb2.TaskOutcome.STATUS_SUCCEEDED or not outcome.has_result:
        return "an inline result on an outcome that is not a success with a result"
    if (result.run_id, result.node_id, result.attempt) != (outcome.run_id, outcome.node_id, outcome.attempt):
        return (f"its inline result names run {result.run_id[:64]!r}, node {result.node_id[:64]!r}, "
                f"attempt {result.attempt}, not the outcome's")
    size = result.ByteSize()
    if size > MAX_INLINE_RESULT_BYTES:
        return f"its inline result is {size} bytes, over the limit of {MAX_INLINE_RESULT_BYTES}"
    return None


class OutcomeBatches:
    def __init__(
        self,
        stream: OutcomeStream,
        store: RunStore,
        graphs: RunGraphs,
        plans: PlanCache,
        dispatcher: Dispatcher,
        *,
        parking: Parking,
        children: ChildRuns,
        rng: random.Random | None = None,
        dynamic: DynamicNodes | None = None,
        limits: Limits | None = None,
        bus_keys: BusKeys = UNSIGNED,
    ) -> None:
        self.bus_keys = bus_keys
        self.stream = stream
        self.store = store
        self.graphs = graphs
        self.plans = plans
        self.dispatcher = dispatcher
        self.stats = ConsumerStats()
        self._rng = rng or random.Random()
        self.dynamic = dynamic or DynamicNodes(store.redis)
        self.limits = limits or Limits()
        self.parking = parking
        self.children = children
        self._notifications: set[asyncio.Task[Any]] = set()

    async def process(self, entries: Sequence[Entry], poison: Sequence[DeadOutcome] = ()) -> None:
        """Apply, dispatch and acknowledge one batch; ``poison`` entries are dead-lettered
        unapplied. Raises Redis errors and DownstreamUnavailable (nothing acknowledged)."""
        self.stats.batches += 1
        started = time.perf_counter()
        dead: list[DeadOutcome] = list(poison)
        for letter in poison:
            log.error("outcome dead-lettered", entry_id=letter.entry_id.decode(), reason=letter.reason)
        skip = {letter.entry_id for letter in poison}
        decoded: list[tuple[bytes, messages_pb2.TaskOutcome]] = []
        for entry_id, fields in entries:
            if entry_id in skip:
                continue
            try:
                result = decode_outcome(entry_id, fields, self.bus_keys)
            except _BATCH_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 - one outcome must not fail its batch
                result = _unprocessable(entry_id, exc, fields.get(keys.OUTCOME_FIELD, b""))
            if isinstance(result, DeadOutcome):
                log.error("outcome dead-lettered", entry_id=entry_id.decode(), reason=result.reason)
                dead.append(result)
            else:
                decoded.append((entry_id, result))
        decoded = await self._count_run_ended(decoded)
        hashes = await self.graphs.hashes({o.run_id for _, o in decoded})
        work: list[tuple[bytes, messages_pb2.TaskOutcome, Plan]] = []
        for entry_id, outcome in decoded:
            try:
                plan_or_dead = await self._plan_for(entry_id, outcome, hashes.get(outcome.run_id))
            except _BATCH_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 - one outcome must not fail its batch
                plan_or_dead = _unprocessable(entry_id, exc, outcome.SerializeToString(), outcome)
            if isinstance(plan_or_dead, DeadOutcome):
                dead.append(plan_or_dead)
            elif plan_or_dead is not None:
                work.append((entry_id, outcome, plan_or_dead))
        spans = SpanBatch()
        try:
            deliveries = await self._apply(work, dead, spans)
            if deliveries:
                await self._dispatch(deliveries)
        finally:
            spans.end()
        await self.stream.ack([entry_id for entry_id, _ in entries], dead)
        self.stats.dead_lettered += len(dead)
        OUTCOME_BATCH_SIZE.observe(len(entries))
        OUTCOME_APPLY_SECONDS.observe(time.perf_counter() - started)

    async def _prepare(
        self, entry_id: bytes, outcome: messages_pb2.TaskOutcome, plan: Plan, lost_attempts: int
    ) -> tuple[OutcomeToApply, PreparedFlow] | DeadOutcome:
        """What the script needs to apply one outcome, or the outcome as a dead letter when
        something in it breaks the preparation (a bug it found, never a reason to fail the batch)."""
        try:
            flow = prepare(outcome, plan, self.dynamic.cached(outcome.run_id, outcome.node_id), self.limits)
            wait = await self._wait_of(outcome) if outcome.status == _WAITING else None
            return self._to_apply(outcome, plan, lost_attempts, flow, wait), flow
        except _BATCH_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - one outcome must not fail its batch
            return _unprocessable(entry_id, exc, outcome.SerializeToString(), outcome)

    async def _count_run_ended(
        self, decoded: list[tuple[bytes, messages_pb2.TaskOutcome]]
    ) -> list[tuple[bytes, messages_pb2.TaskOutcome]]:
        """Count the STATUS_CANCELED outcomes in their ended runs; returns the outcomes still to
        apply (the others, and those of runs that have not ended, turned into lost attempts)."""
        canceled = [(entry_id, o) for entry_id, o in decoded if o.status == _CANCELED]
        if not canceled:
            return decoded
        codes = await self.store.count_run_ended(
            [(o.run_id, o.node_id, o.attempt, "skipped" if _skipped(o) else "stopped") for _, o in canceled]
        )
        live = [(o.run_id, o.node_id) for (_, o), code in zip(canceled, codes, strict=True) if code == "live"]
        lost = await self.store.lost_only(live)
        redeliver: dict[bytes, messages_pb2.TaskOutcome] = {}
        for (entry_id, outcome), code in zip(canceled, codes, strict=True):
            ids = {"run_id": outcome.run_id, "node_id": outcome.node_id, "attempt": outcome.attempt,
                   "worker_id": outcome.worker_id}
            if code == "counted":
                if _skipped(outcome):
                    self.stats.skipped += 1
                else:
                    self.stats.stopped += 1
            elif code == "live":
                log.warning("a worker reported the attempt canceled but its run has not ended; "
                            "the node is redelivered as a new attempt", **ids)
                redeliver[entry_id] = _as_lost(
                    outcome, give_up=lost.get((outcome.run_id, outcome.node_id), 0) >= MAX_REFUSALS)
            else:
                self.stats.ignored += 1
                log.debug("canceled outcome ignored", reason=code, **ids)
        return [(entry_id, redeliver.get(entry_id, o)) for entry_id, o in decoded
                if o.status != _CANCELED or entry_id in redeliver]

    async def _plan_for(
        self, entry_id: bytes, outcome: messages_pb2.TaskOutcome, graph_hash: str | None
    ) -> Plan | DeadOutcome | None:
        ids = {"run_id": outcome.run_id, "node_id": outcome.node_id, "attempt": outcome.attempt}
        if graph_hash is None:
            self.stats.ignored += 1
            log.warning("outcome of an unknown or expired run ignored", **ids)
            return None
        try:
            plan = await self.plans.get(graph_hash)
        except (GraphNotFound, SpecError) as exc:
            return DeadOutcome(
                entry_id,
                f"graph of run {outcome.run_id} unusable: {exc}",
                outcome.SerializeToString(),
                outcome,
            )
        node = plan.nodes.get(outcome.node_id)
        if node is None and await self.dynamic.load(outcome.run_id, [outcome.node_id], plan):
            return plan  # a node added at run time
        if node is None or node.kind is not NodeKind.TASK:
            return DeadOutcome(
                entry_id,
                f"node {outcome.node_id!r} is not a task of run {outcome.run_id}",
                outcome.SerializeToString(),
                outcome,
            )
        return plan

    def _to_apply(
        self,
        outcome: messages_pb2.TaskOutcome,
        plan: Plan,
        lost_attempts: int,
        flow: PreparedFlow,
        wait: WaitToApply | common_pb2.ErrorInfo | None,
    ) -> OutcomeToApply:
        if isinstance(wait, WaitToApply):
            return OutcomeToApply(
                run_id=outcome.run_id,
                node_id=outcome.node_id,
                attempt=outcome.attempt,
                succeeded=False,
                error=b"",
                worker_id=outcome.worker_id,
                retry_delay_ms=-1,
                closure_json=flow.closure_json(failed=True),
                flow_json=flow.flow_json,
                wait=wait,
            )
        if wait is not None:
            log.warning(
                "invalid wait: the node fails",
                run_id=outcome.run_id,
                node_id=outcome.node_id,
                error=wait.message,
            )
            flow = replace(flow, error=wait)
        if flow.error is not None:
            log.warning(
                "invalid directive: the node fails",
                run_id=outcome.run_id,
                node_id=outcome.node_id,
                error=flow.error.message,
            )
        succeeded = outcome.status == messages_pb2.TaskOutcome.STATUS_SUCCEEDED and flow.error is None
        error = b""
        delay = -1
        worker_lost = False
        if not succeeded:
            info = flow.error or (outcome.error if outcome.HasField("error") else _MISSING_ERROR)
            error = info.SerializeToString()
            worker_lost = outcome.worker_lost and info.retryable
            if worker_lost:
                delay = 0  # redelivered now; the retry budget is for real failures
            else:
                real_failures = outcome.attempt - lost_attempts
                delay = retry_delay_ms(flow.task.retry, real_failures, info.retryable, self._rng)
        return OutcomeToApply(
            run_id=outcome.run_id,
            node_id=outcome.node_id,
            attempt=outcome.attempt,
            succeeded=succeeded,
            error=error,
            worker_id=outcome.worker_id,
            retry_delay_ms=delay,
            closure_json=flow.closure_json(failed=not succeeded),
            worker_lost=worker_lost,
            flow_json=flow.flow_json,
            result=outcome.result if succeeded and outcome.HasField("result") else None,
            # The wait timer's FeedbackTimeout names the request it ends.
            ends_wait=outcome.wait.feedback.request_id if not succeeded and outcome.HasField("wait") else "",
        )

    async def _apply(
        self, batch: Sequence[tuple[bytes, messages_pb2.TaskOutcome, Plan]], dead: list[DeadOutcome],
        spans: SpanBatch,
    ) -> list[coordinator_pb2.Delivery]:
        """Apply the outcomes of ``batch``; those that cannot be prepared go to ``dead``.

        Traces (docs/operations.md, "Traces"): each outcome's span "apply", child of the outcome's
        context (the worker's "commit"), and when it released nodes a span "dispatch" under it,
        whose context the released deliveries carry; both end when the batch is dispatched."""
        failed = messages_pb2.TaskOutcome.STATUS_FAILED
        lost = await self.store.lost_attempts(
            [(o.run_id, o.node_id) for _, o, _ in batch if o.status == failed and not o.worker_lost]
        )
        work: list[tuple[messages_pb2.TaskOutcome, Plan]] = []
        flows: list[PreparedFlow] = []
        to_apply: list[OutcomeToApply] = []
        for entry_id, o, plan in batch:
            prepared = await self._prepare(entry_id, o, plan, lost.get((o.run_id, o.node_id), 0))
            if isinstance(prepared, DeadOutcome):
                dead.append(prepared)
                continue
            work.append((o, plan))
            to_apply.append(prepared[0])
            flows.append(prepared[1])
        applied = [spans.child("apply", o.trace_context, _span_attributes(o)) for o, _ in work]
        results = await self.store.apply_outcomes(to_apply, now_ms=int(time.time() * 1000))
        await self._find_dynamic(work, flows, results)
        deliveries: dict[tuple[str, str, int], coordinator_pb2.Delivery | None] = {}
        canceled: list[str] = []
        for (outcome, plan), result, context in zip(work, results, applied, strict=True):
            # Logged in the outcome's trace (its "apply" span when tracing), so the lines carry its ids.
            with trace_context(context):
                ids = {"run_id": outcome.run_id, "node_id": outcome.node_id, "attempt": outcome.attempt}
                fenced = {**ids, "worker_id": outcome.worker_id, "worker_lost": outcome.worker_lost}
                if result.code == "applied":
                    self.stats.applied += 1
                    if outcome.worker_lost and result.retry is not None:
                        self.stats.worker_lost += 1
                        log.warning(
                            "attempt lost with its worker redelivered", error=outcome.error.message, **ids
                        )
                elif result.code == "duplicate":
                    self.stats.duplicates += 1
                    log.info("duplicate outcome rejected: that attempt was applied already", **fenced)
                elif result.code == "stale":
                    self.stats.stale += 1
                    log.info("stale outcome rejected: not the node's current attempt", **fenced)
                else:
                    self.stats.ignored += 1
                    log.debug("outcome ignored", reason=result.code, run_status=result.run_status, **ids)
                if result.run_status not in LIVE_STATUSES:
                    # Ended (by this outcome, or before it: a late outcome): nothing more to plan.
                    self.graphs.forget(outcome.run_id)
                if result.code == "applied" and result.run_status not in LIVE_STATUSES:
                    log.info("run ended", run_id=outcome.run_id, status=result.run_status)
                    if result.run_status == "CANCELED":
                        canceled.append(outcome.run_id)
            if result.ready or result.retry is not None:
                context = spans.child("dispatch", context, {"graflow.run_id": outcome.run_id})
            trace = dict(context)
            for node_id, attempt in result.ready:
                deliveries[(outcome.run_id, node_id, attempt)] = self._delivery(
                    plan, outcome.run_id, node_id, attempt, result, trace_context=trace
                )
            if result.retry is not None:
                node_id, attempt, delay_ms, lost_attempts = result.retry
                retry = self._delivery(
                    plan,
                    outcome.run_id,
                    node_id,
                    attempt,
                    result,
                    delay_ms=delay_ms,
                    trace_context=trace,
                    lost_attempts=lost_attempts,
                    replaces_lost_attempt=outcome.worker_lost,
                )
                deliveries[(outcome.run_id, node_id, attempt)] = retry
                if retry is not None and not outcome.worker_lost:
                    metrics.TASKS_RETRIED.labels(retry.envelope.task_type, retry.envelope.queue).inc()
        if canceled:
            # In the background: the batch does not wait for the child runs' cancels. (Workers learn
            # of every end from gf:ended, written with the end itself.)
            task = asyncio.create_task(self._cancel_children(canceled))
            self._notifications.add(task)
            task.add_done_callback(self._notifications.discard)
        return [d for d in deliveries.values() if d is not None]

    async def _wait_of(self, outcome: messages_pb2.TaskOutcome) -> WaitToApply | common_pb2.ErrorInfo:
        cycle = await self.store.redis.hget(keys.run_cycles(outcome.run_id), outcome.node_id)
        return await self.parking.prepare(outcome, int(cycle or 0))

    async def _cancel_children(self, run_ids: Sequence[str]) -> None:
        for run_id in run_ids:
            try:
                await self.children.cancel_children(run_id)
            except (DownstreamUnavailable, *REDIS_UNAVAILABLE) as exc:
                log.warning("child runs of a canceled run not canceled", run_id=run_id, error=str(exc))

    async def _find_dynamic(
        self,
        work: Sequence[tuple[messages_pb2.TaskOutcome, Plan]],
        flows: Sequence[PreparedFlow],
        results: Sequence[AppliedOutcome],
    ) -> None:
        """Remember the nodes the directives added, and load the dynamic nodes to dispatch."""
        wanted: dict[str, tuple[Plan, set[str]]] = {}
        for (outcome, plan), flow, result in zip(work, flows, results, strict=True):
            for index, node_id in result.added.items():
                template = flow.added.get(index)
                if template is not None:
                    spec = type(template.spec)()
                    spec.CopyFrom(template.spec)
                    spec.id = node_id
                    self.dynamic.remember(outcome.run_id, replace(template, node_id=node_id, spec=spec))
            nodes = [node_id for node_id, _ in result.ready]
            if result.retry is not None:
                nodes.append(result.retry[0])
            unknown = {
                n for n in nodes if n not in plan.nodes and self.dynamic.cached(outcome.run_id, n) is None
            }
            if unknown:
                wanted.setdefault(outcome.run_id, (plan, set()))[1].update(unknown)
        for run_id, (plan, nodes) in wanted.items():
            await self.dynamic.load(run_id, nodes, plan)

    def _delivery(
        self, plan: Plan, run_id: str, node_id: str, attempt: int, result: AppliedOutcome, **kwargs: Any
    ) -> coordinator_pb2.Delivery | None:
        node = plan.nodes.get(node_id)
        dynamic = self.dynamic.cached(run_id, node_id) if node is None else None
        task = node.task if node is not None else (dynamic.task if dynamic is not None else None)
        if task is None:
            log.error("READY node without task data not dispatched", run_id=run_id, node_id=node_id)
            return None
        cycle = result.cycles.get(node_id)
        if cycle is not None:
            kwargs.update(cycle=cycle.cycle, iteration_data_json=cycle.data_json, feedback=cycle.feedback)
        return delivery(plan, run_id, node_id, attempt, task=task, **kwargs)

    async def _dispatch(self, deliveries: list[coordinator_pb2.Delivery]) -> None:
        try:
            counts = await self.dispatcher.dispatch(deliveries)
        except InvalidDelivery as exc:
            # Retrying the batch would fail the same way. The nodes stay READY in Redis and the
            # recovery sweep tries them again.
            log.error("invalid delivery not dispatched", error=str(exc), deliveries=len(deliveries))
            return
        self.stats.dispatched += len(deliveries)
        self.stats.dispatch_duplicates += counts.duplicates


def _unprocessable(
    entry_id: bytes, exc: Exception, raw: bytes, outcome: messages_pb2.TaskOutcome | None = None
) -> DeadOutcome:
    """One outcome that broke its processing, as a dead letter naming the error (logged with its
    traceback: it is a bug or an input no check refused yet)."""
    log.exception("outcome could not be processed; it is dead-lettered alone", entry_id=entry_id.decode())
    return DeadOutcome(entry_id, f"outcome could not be processed: {type(exc).__name__}: {str(exc)[:512]}",
                       raw, outcome)


def _span_attributes(outcome: messages_pb2.TaskOutcome) -> dict[str, str | int]:
    return {"graflow.run_id": outcome.run_id, "graflow.node_id": outcome.node_id,
            "graflow.attempt": outcome.attempt}


def _skipped(outcome: messages_pb2.TaskOutcome) -> bool:
    """A STATUS_CANCELED outcome of a delivery that never started (else a body that stopped)."""
    return outcome.error.type == RUN_ENDED


def _as_lost(outcome: messages_pb2.TaskOutcome, *, give_up: bool) -> messages_pb2.TaskOutcome:
    """A STATUS_CANCELED outcome of a live run, as an attempt lost with its worker (redelivered),
    or with ``give_up`` as a failure that is not retried."""
    lost = messages_pb2.TaskOutcome()
    lost.CopyFrom(outcome)
    lost.status = messages_pb2.TaskOutcome.STATUS_FAILED
    lost.worker_lost = not give_up
    lost.has_result = False
    lost.ClearField("result")
    del lost.directives[:]
    lost.error.CopyFrom(common_pb2.ErrorInfo(
        type=RUN_ENDED,
        message=f"worker {outcome.worker_id} did not run attempt {outcome.attempt} of node "
        f"{outcome.node_id!r}, believing run {outcome.run_id} had ended; it had not: "
        + (f"the node was refused {MAX_REFUSALS} times and fails" if give_up else "the node is redelivered"),
        retryable=not give_up,
    ))
    return lost
