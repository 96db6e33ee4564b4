"""Run state transitions in Redis: create a run, apply outcomes (pipelined per batch), cancel.

Each transition is one Lua script (atomic, idempotent); see the ``*.lua`` files beside this
module and "Redis keys" in docs/architecture.md for the layout.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from graflow_api.v1 import result_store_pb2 as rs_pb2
from graflow_runtime import keys
from graflow_runtime.runids import run_cell
from graflow_runtime.signing import UNSIGNED, BusKeys, Kind

from graflow_scheduler.errors import ParentEnded, ParentNodeUnknown, ParentNotFound, RunNotFound
from graflow_scheduler.graph.plan import Plan
from graflow_scheduler.state import scripts


def run_script_keys(run_id: str) -> list[str]:
    """KEYS[1..7] of every run script: the run's six keys and its cell's active-runs set."""
    return [*keys.run_keys(run_id), keys.active_runs(keys.cell_of(run_id))]


def flow_script_keys(run_id: str) -> list[str]:
    """KEYS of apply_outcome, cancel_run and resolve_wait: :func:`run_script_keys`, then the
    run's dynamic nodes, cycles, waits and child runs (KEYS[8..11]) and its cell's indexes of
    pending feedback, wait deadlines, ended child runs and runs whose children are to be canceled
    (KEYS[12..15]), and its cell's ended-runs stream workers read (KEYS[16]). Every key is of the
    run's cell (one slot on a cluster)."""
    cell = keys.cell_of(run_id)
    return [
        *run_script_keys(run_id),
        *keys.run_flow_keys(run_id),
        keys.feedback_pending(cell),
        keys.wait_deadlines(cell),
        keys.children_ended(cell),
        keys.children_to_cancel(cell),
        keys.runs_ended(cell),
    ]


def idempotency_prefix(run_id: str) -> str:
    """The prefix of the idempotency keys of the run's cell (finish_run expires the run's key,
    prefix + its idempotency key, with the run)."""
    return keys.idempotency("", keys.cell_of(run_id))


@dataclass(frozen=True, slots=True)
class CreatedRun:
    run_id: str
    created: bool


@dataclass(frozen=True, slots=True)
class WaitToApply:
    """What a WAITING outcome parks its node on (see waits.lua)."""

    wait_id: str
    # FeedbackRequest bytes (as recorded), or "child:<child run id>".
    record: bytes
    feedback: bool
    deadline_ms: int = 0
    # The child run's meta key ("" for feedback): a child that ended already resumes the node.
    child_meta_key: str = ""


@dataclass(frozen=True, slots=True)
class OutcomeToApply:
    run_id: str
    node_id: str
    attempt: int
    succeeded: bool
    error: bytes  # ErrorInfo bytes when failed
    worker_id: str
    retry_delay_ms: int  # -1 = no retry
    closure_json: str
    # The coordinator reported the attempt lost with its worker: counted as '<node>:lost'.
    worker_lost: bool = False
    # Dynamic control flow (graflow_scheduler.graph.directives; "" = the node itself, no directives
    # or limits).
    flow_json: str = ""
    # Set for a WAITING outcome (``succeeded`` is then ignored).
    wait: WaitToApply | None = None
    # For the wait timer's FeedbackTimeout: the wait it ends (it applies only while the node waits
    # on it).
    ends_wait: str = ""
    # A success's result carried inline in its outcome: stored in the run's result hash (the
    # result-store's layout) by the script, only if it applies the outcome.
    result: rs_pb2.NodeResult | None = None


@dataclass(frozen=True, slots=True)
class NodeCycle:
    """A dispatched node's cycle, the data of ctx.next_iteration (JSON, b"" = none) and the
    answers to its feedback requests in this cycle (FeedbackResponses bytes, b"" = none)."""

    cycle: int
    data_json: bytes = b""
    feedback: bytes = b""


@dataclass(frozen=True, slots=True)
class AppliedOutcome:
    # applied | duplicate | stale | ignored | unknown_run | unknown_node
    code: str
    # Task nodes to dispatch: (node id, attempt).
    ready: tuple[tuple[str, int], ...]
    # A retry to dispatch after a delay: (node id, new attempt, delay ms, lost attempts of the node).
    retry: tuple[str, int, int, int] | None
    run_status: str
    # Nodes to dispatch on a re-run, with iteration data or with feedback answers (absent: cycle 0,
    # no data, no answers).
    cycles: dict[str, NodeCycle] = field(default_factory=dict)
    # Nodes added by next_task directives: directive index -> node id.
    added: dict[int, str] = field(default_factory=dict)

    @property
    def fenced(self) -> bool:
        """True when the outcome changed nothing (duplicate or stale attempt)."""
        return self.code in ("duplicate", "stale")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def parse_cycles(flat: Sequence[object]) -> dict[str, NodeCycle]:
    """The flat {node, cycle, data, answers, ...} lists of the run scripts (flow.lua push_cycle)."""
    return {
        _text(flat[i]): NodeCycle(int(flat[i + 1]), _bytes(flat[i + 2]), _bytes(flat[i + 3]))  # type: ignore[call-overload]
        for i in range(0, len(flat), 4)
    }


def _parse_applied(raw: object) -> AppliedOutcome:
    code, ready_flat, retry_flat, run_status = raw[:4]  # type: ignore[index]
    cycles: dict[str, NodeCycle] = {}
    added: dict[int, str] = {}
    if len(raw) > 4:  # type: ignore[arg-type]
        cycles_flat, added_flat = raw[4]  # type: ignore[index]
        cycles = parse_cycles(cycles_flat)
        added = {int(added_flat[i]): _text(added_flat[i + 1]) for i in range(0, len(added_flat), 2)}
    ready = tuple((_text(ready_flat[i]), int(ready_flat[i + 1])) for i in range(0, len(ready_flat), 2))
    retry = None
    if retry_flat:
        lost = int(retry_flat[3]) if len(retry_flat) > 3 else 0
        retry = (_text(retry_flat[0]), int(retry_flat[1]), int(retry_flat[2]), lost)
    return AppliedOutcome(
        code=_text(code), ready=ready, retry=retry, run_status=_text(run_status), cycles=cycles, added=added
    )


@functools.lru_cache(maxsize=1024)
def _apply_keys(run_id: str) -> tuple[str, ...]:
    """KEYS of apply_outcome, built once per run (each outcome of the run sends them):
    :func:`flow_script_keys`, then the run's result hash and its attempts (KEYS[17], KEYS[18]),
    where an inline result is stored. ~1.3 KB a run: 1,024 runs (the runs in flight, which a miss
    only costs a few µs of string building) rather than 4,096, which held ~5 MB of ended runs,
    half the scheduler's 10% memory budget (docs/performance.md, "Memory under a 1,000,000-task
    soak")."""
    return (*flow_script_keys(run_id), keys.results(run_id), keys.result_attempts(run_id))


def _outcome_keys(outcome: OutcomeToApply, notify_feedback: bool) -> tuple[str, ...]:
    """KEYS of one apply_outcome call: with KEYS[19] the waited child run's meta, or for a feedback
    request when ``notify_feedback``, the cell's feedback-opened stream (the script appends the
    request there, for graflow_scheduler.notify)."""
    run_keys = _apply_keys(outcome.run_id)
    wait = outcome.wait
    if wait is not None and wait.child_meta_key:
        return (*run_keys, wait.child_meta_key)
    if wait is not None and wait.feedback and notify_feedback:
        return (*run_keys, keys.feedback_opened(keys.cell_of(outcome.run_id)))
    return run_keys


def _result_arg(outcome: OutcomeToApply, now_ms: int) -> bytes:
    """The inline result as the result-store stores it (NodeResult bytes, ``stored_at_ms`` set), or
    b"" when there is none."""
    if outcome.result is None:
        return b""
    outcome.result.stored_at_ms = now_ms
    return outcome.result.SerializeToString()


def _wait_args(outcome: OutcomeToApply) -> list[str | bytes | int]:
    wait = outcome.wait
    if wait is None:
        return [outcome.ends_wait] if outcome.ends_wait else []
    return [wait.wait_id, wait.record, "1" if wait.feedback else "0", wait.deadline_ms]


@dataclass(frozen=True, slots=True)
class ResolvedWait:
    # resumed | failing | kept | answered | closed | unknown_run | unknown_wait
    code: str
    # resumed: the node's new attempt, to dispatch.
    attempt: int = 0
    cycle: NodeCycle = NodeCycle(0)
    run_status: str = ""
    # answered: the answer stored before (FeedbackResponse bytes).
    answer: bytes = b""


@dataclass(frozen=True, slots=True)
class ParentLink:
    run_id: str
    node_id: str


class RunStore:
    """Writes of run state. ``retention_s``: how long ended runs are kept; ``bus_keys`` sign the
    outcomes it appends itself (a wait's timeout); ``notify_feedback``: each feedback request
    recorded is also appended to its cell's feedback-opened stream (a webhook is configured)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        retention_s: int,
        bus_keys: BusKeys = UNSIGNED,
        notify_feedback: bool = False,
    ) -> None:
        self.redis = redis
        self.retention_s = retention_s
        self.bus_keys = bus_keys
        self.notify_feedback = notify_feedback

    async def load_scripts(self) -> None:
        """SCRIPT LOAD the run scripts, so that the first calls find them."""
        for script in scripts.ALL:
            await script.load_into(self.redis)

    async def create_run(
        self,
        plan: Plan,
        *,
        run_id: str,
        graph_hash: str,
        now_ms: int,
        idempotency_key: str = "",
        labels: Mapping[str, str] | None = None,
        parent: ParentLink | None = None,
        channel: Mapping[str, bytes] | None = None,
    ) -> CreatedRun:
        """Create the run with its roots READY; with a taken idempotency key, return that run. A
        child run is linked to its ``parent`` node; raises :class:`ParentEnded` when the parent
        run has ended, :class:`ParentNotFound` when it does not exist, :class:`ParentNodeUnknown`
        when it has no such node (atomically: nothing is created). ``channel``: the run's first
        channel values (key -> Payload bytes, SubmitRunRequest.arguments_json), written with it.
        ``run_id`` must be of the cell :func:`~graflow_runtime.runids.run_cell` names (its
        parent's, its idempotency key's): the script touches the keys of that one cell (else
        ValueError)."""
        cell = keys.cell_of(run_id)
        wanted = run_cell(parent_run_id=parent.run_id if parent else "", idempotency_key=idempotency_key)
        if wanted is not None and wanted != cell:
            raise ValueError(
                f"run id {run_id} is not in the cell of its parent or idempotency key: make it with "
                "new_run_id(cell=graflow_runtime.runids.run_cell(...))"
            )
        run_keys: list[str] = [
            *run_script_keys(run_id),
            keys.runs_index(cell),
            keys.idempotency(idempotency_key, cell),
            keys.channel(run_id),
        ]
        if parent:
            run_keys += [
                keys.run_meta(parent.run_id),
                keys.run_children(parent.run_id),
                keys.run_state(parent.run_id),
            ]
        roots = set(plan.roots)
        others = [node_id for node_id in plan.nodes if node_id not in roots]
        args: list[str | int | bytes] = [
            run_id,
            plan.name,
            graph_hash,
            now_ms,
            json.dumps(dict(labels or {}), separators=(",", ":")),
            json.dumps(list(plan.sinks), separators=(",", ":")),
            idempotency_key,
            parent.run_id if parent else "",
            parent.node_id if parent else "",
            len(plan.roots),
            len(plan.roots) + len(others),
            self.retention_s,
            *plan.roots,
            *others,
            *(item for pair in (channel or {}).items() for item in pair),
        ]
        created, existing_id = await scripts.CREATE_RUN.run(self.redis, run_keys, args)
        if int(created) == -2 and parent:
            raise ParentNodeUnknown(parent.run_id, parent.node_id)
        if int(created) < 0:
            parent_run, parent_status = parent.run_id if parent else "", _text(existing_id)
            if parent_status == "unknown":
                raise ParentNotFound(parent_run)
            raise ParentEnded(parent_run, parent_status)
        return CreatedRun(run_id=_text(existing_id), created=bool(int(created)))

    async def apply_outcomes(
        self, outcomes: Sequence[OutcomeToApply], *, now_ms: int
    ) -> list[AppliedOutcome]:
        """Apply a batch of outcomes in one pipeline (one script call each), results in order."""
        if not outcomes:
            return []
        calls = [
            (
                _outcome_keys(o, self.notify_feedback),
                [
                    o.run_id,
                    o.node_id,
                    o.attempt,
                    "W" if o.wait is not None else ("S" if o.succeeded else "F"),
                    o.error,
                    o.worker_id,
                    now_ms,
                    o.retry_delay_ms,
                    o.closure_json,
                    self.retention_s,
                    idempotency_prefix(o.run_id),
                    "1" if o.worker_lost else "0",
                    o.flow_json,
                    _result_arg(o, now_ms),
                    *_wait_args(o),
                ],
            )
            for o in outcomes
        ]
        raw = await scripts.APPLY_OUTCOME.run_many(self.redis, calls)
        return [_parse_applied(r) for r in raw]

    async def count_run_ended(self, outcomes: Sequence[tuple[str, str, int, str]]) -> list[str]:
        """Count STATUS_CANCELED outcomes (run id, node id, attempt, meta counter ``skipped`` or
        ``stopped``) in their ended runs (run_ended_outcome.lua), in one pipeline. Returns each
        one's code: counted | duplicate | live (its run has not ended) | unknown_run."""
        if not outcomes:
            return []
        calls = [(run_script_keys(run_id), [node_id, attempt, counter])
                 for run_id, node_id, attempt, counter in outcomes]
        raw = await scripts.RUN_ENDED_OUTCOME.run_many(self.redis, calls)
        return [_text(code) for code in raw]

    async def lost_only(self, nodes: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """(run id, node id) -> attempts of the node lost with their worker (``<node>:lost``)."""
        if not nodes:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for run_id, node_id in nodes:
                pipe.hget(keys.run_joins(run_id), f"{node_id}:lost")
            counts = await pipe.execute()
        return {node: int(count or 0) for node, count in zip(nodes, counts, strict=True)}

    async def lost_attempts(self, nodes: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """(run id, node id) -> attempts of the node that do not count against its retry budget:
        those lost with their worker, and (``<node>:rbase``, see flow.lua) those of its earlier
        cycles when it ran again through goto, next_iteration or a loop."""
        if not nodes:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for run_id, node_id in nodes:
                pipe.hmget(keys.run_joins(run_id), [f"{node_id}:lost", f"{node_id}:rbase"])
            counts = await pipe.execute()
        return {
            node: int(lost or 0) + int(base or 0) for node, (lost, base) in zip(nodes, counts, strict=True)
        }

    async def cancel_run(self, run_id: str, reason: str, *, now_ms: int) -> str:
        """Cancel a run that has not ended; returns the run's status afterwards (an ended run is unchanged).
        Raises :class:`RunNotFound`."""
        status = await scripts.CANCEL_RUN.run(
            self.redis,
            flow_script_keys(run_id),
            [run_id, reason, now_ms, self.retention_s, idempotency_prefix(run_id)],
        )
        text = _text(status)
        if not text:
            raise RunNotFound(run_id)
        return text

    async def resolve_wait(
        self,
        mode: str,
        run_id: str,
        node_id: str,
        wait_id: str,
        *,
        now_ms: int,
        payload: bytes = b"",
        message: str = "",
    ) -> ResolvedWait:
        """Resolve the wait ``wait_id`` of WAITING ``node_id`` (resolve_wait.lua): ``mode``
        "answer" (``payload`` = FeedbackResponse bytes), "child" (the child run ended) or
        "deadline" (``payload`` = the FeedbackTimeout outcome, or b"" to keep waiting; signed here)."""
        signature = self.bus_keys.sign(Kind.OUTCOME, payload) if mode == "deadline" and payload else None
        raw = await scripts.RESOLVE_WAIT.run(
            self.redis,
            [*flow_script_keys(run_id), keys.outcomes_stream(keys.cell_of(run_id))],
            [mode, run_id, node_id, wait_id, now_ms, payload, message,
             *((signature.key_id, signature.mac) if signature else ("", ""))],
        )
        code, slot, cycles_flat, run_status = raw
        code = _text(code)
        if code == "answered":
            return ResolvedWait(code, answer=_bytes(slot), run_status=_text(run_status))
        if code != "resumed":
            return ResolvedWait(code, run_status=_text(run_status))
        cycle = parse_cycles(cycles_flat).get(node_id, NodeCycle(0))
        return ResolvedWait(code, attempt=int(slot), cycle=cycle, run_status=_text(run_status))
