"""One batch of outcomes: decode (undecodable ones become dead letters), find each run's plan,
apply them all in one pipeline, dispatch what they released in one ``Dispatch``, acknowledge.

A batch is acknowledged only after its dispatch succeeded: on DownstreamUnavailable nothing is
acknowledged and the caller applies the same batch again, which is safe because a repeated
outcome changes nothing and returns the nodes it released (the coordinator deduplicates).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import structlog
from google.protobuf.message import DecodeError

from graflow_api.v1 import common_pb2, coordinator_pb2, messages_pb2
from graflow_runtime import keys

from graflow_scheduler.dispatch import Dispatcher, delivery
from graflow_scheduler.errors import GraphNotFound, SpecError
from graflow_scheduler.outcome_stream import DeadOutcome, Entry, OutcomeStream
from graflow_scheduler.plan import NodeKind, Plan
from graflow_scheduler.plans import PlanCache, RunGraphs
from graflow_scheduler.retry import retry_delay_ms
from graflow_scheduler.runids import is_run_id
from graflow_scheduler.state import OutcomeToApply, RunStore

log = structlog.get_logger(__name__)

_STATUSES = {messages_pb2.TaskOutcome.STATUS_SUCCEEDED, messages_pb2.TaskOutcome.STATUS_FAILED}
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
    dead_lettered: int = 0
    dispatched: int = 0
    redis_errors: int = 0


def decode_outcome(entry_id: bytes, fields: dict[bytes, bytes]) -> messages_pb2.TaskOutcome | DeadOutcome:
    raw = fields.get(keys.OUTCOME_FIELD)
    if raw is None:
        return DeadOutcome(entry_id, f"undecodable outcome: no field {keys.OUTCOME_FIELD.decode()!r}", b"")
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
        problem = f"status {outcome.status} is neither SUCCEEDED nor FAILED"
    if problem:
        return DeadOutcome(entry_id, f"invalid outcome: {problem}", raw, outcome)
    return outcome


class OutcomeBatches:
    def __init__(
        self,
        stream: OutcomeStream,
        store: RunStore,
        graphs: RunGraphs,
        plans: PlanCache,
        dispatcher: Dispatcher,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.stream = stream
        self.store = store
        self.graphs = graphs
        self.plans = plans
        self.dispatcher = dispatcher
        self.stats = ConsumerStats()
        self._rng = rng or random.Random()

    async def process(self, entries: Sequence[Entry], poison: Sequence[DeadOutcome] = ()) -> None:
        """Apply, dispatch and acknowledge one batch; ``poison`` entries are dead-lettered
        unapplied. Raises DownstreamUnavailable (nothing acknowledged) and Redis errors."""
        self.stats.batches += 1
        dead: list[DeadOutcome] = list(poison)
        for letter in poison:
            log.error("outcome dead-lettered", entry_id=letter.entry_id.decode(), reason=letter.reason)
        skip = {letter.entry_id for letter in poison}
        decoded: list[tuple[bytes, messages_pb2.TaskOutcome]] = []
        for entry_id, fields in entries:
            if entry_id in skip:
                continue
            result = decode_outcome(entry_id, fields)
            if isinstance(result, DeadOutcome):
                log.error("outcome dead-lettered", entry_id=entry_id.decode(), reason=result.reason)
                dead.append(result)
            else:
                decoded.append((entry_id, result))
        hashes = await self.graphs.hashes({o.run_id for _, o in decoded})
        work: list[tuple[messages_pb2.TaskOutcome, Plan]] = []
        for entry_id, outcome in decoded:
            plan_or_dead = await self._plan_for(entry_id, outcome, hashes.get(outcome.run_id))
            if isinstance(plan_or_dead, DeadOutcome):
                dead.append(plan_or_dead)
            elif plan_or_dead is not None:
                work.append((outcome, plan_or_dead))
        deliveries = await self._apply(work)
        if deliveries:
            await self._dispatch(deliveries)
        await self.stream.ack([entry_id for entry_id, _ in entries], dead)
        self.stats.dead_lettered += len(dead)

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
        if node is None or node.kind is not NodeKind.TASK:
            return DeadOutcome(
                entry_id,
                f"node {outcome.node_id!r} is not a task of run {outcome.run_id}",
                outcome.SerializeToString(),
                outcome,
            )
        return plan

    def _to_apply(self, outcome: messages_pb2.TaskOutcome, plan: Plan) -> OutcomeToApply:
        if outcome.directives:
            log.warning(
                "task directives are not supported yet and were ignored",
                run_id=outcome.run_id,
                node_id=outcome.node_id,
                directives=len(outcome.directives),
            )
        succeeded = outcome.status == messages_pb2.TaskOutcome.STATUS_SUCCEEDED
        error = b""
        delay = -1
        if not succeeded:
            info = outcome.error if outcome.HasField("error") else _MISSING_ERROR
            error = info.SerializeToString()
            delay = retry_delay_ms(
                plan.task(outcome.node_id).retry, outcome.attempt, info.retryable, self._rng
            )
        return OutcomeToApply(
            run_id=outcome.run_id,
            node_id=outcome.node_id,
            attempt=outcome.attempt,
            succeeded=succeeded,
            error=error,
            worker_id=outcome.worker_id,
            retry_delay_ms=delay,
            closure_json=plan.closure_json(outcome.node_id, failed=not succeeded),
        )

    async def _apply(
        self, work: Sequence[tuple[messages_pb2.TaskOutcome, Plan]]
    ) -> list[coordinator_pb2.Delivery]:
        results = await self.store.apply_outcomes(
            [self._to_apply(outcome, plan) for outcome, plan in work], now_ms=int(time.time() * 1000)
        )
        deliveries: dict[tuple[str, str, int], coordinator_pb2.Delivery] = {}
        for (outcome, plan), result in zip(work, results, strict=True):
            ids = {"run_id": outcome.run_id, "node_id": outcome.node_id, "attempt": outcome.attempt}
            if result.code == "applied":
                self.stats.applied += 1
            elif result.code == "duplicate":
                self.stats.duplicates += 1
                log.debug("duplicate outcome changed nothing", **ids)
            elif result.code == "stale":
                self.stats.stale += 1
                log.debug("stale outcome changed nothing", current_state=result.run_status, **ids)
            else:
                self.stats.ignored += 1
                log.debug("outcome ignored", reason=result.code, run_status=result.run_status, **ids)
            if result.code == "applied" and result.run_status != "RUNNING":
                log.info("run ended", run_id=outcome.run_id, status=result.run_status)
            trace = dict(outcome.trace_context)
            for node_id, attempt in result.ready:
                deliveries[(outcome.run_id, node_id, attempt)] = delivery(
                    plan, outcome.run_id, node_id, attempt, trace_context=trace
                )
            if result.retry is not None:
                node_id, attempt, delay_ms = result.retry
                deliveries[(outcome.run_id, node_id, attempt)] = delivery(
                    plan, outcome.run_id, node_id, attempt, delay_ms=delay_ms, trace_context=trace
                )
        return list(deliveries.values())

    async def _dispatch(self, deliveries: list[coordinator_pb2.Delivery]) -> None:
        try:
            await self.dispatcher.dispatch(deliveries)
        except grpc.aio.AioRpcError as exc:
            # Rejected (not unreachable): retrying the batch would fail the same way. The nodes stay
            # READY in Redis and the recovery sweep dispatches them again.
            log.error(
                "coordinator rejected a dispatch; the recovery sweep will retry it",
                code=exc.code().name,
                details=exc.details(),
                deliveries=len(deliveries),
            )
            return
        self.stats.dispatched += len(deliveries)
