"""Run state transitions in Redis: create a run, apply outcomes (pipelined per batch), cancel.

Each transition is one Lua script (atomic, idempotent); see the ``*.lua`` files beside this
module and "Redis keys" in docs/architecture.md for the layout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from graflow_runtime import keys

from graflow_scheduler.errors import RunNotFound
from graflow_scheduler.plan import Plan
from graflow_scheduler.scripts import Scripts

IDEMPOTENCY_PREFIX = keys.idempotency("")


def run_script_keys(run_id: str) -> list[str]:
    """KEYS[1..7] of every run script: the run's six keys and the active-runs set."""
    return [*keys.run_keys(run_id), keys.ACTIVE_RUNS]


def flow_script_keys(run_id: str) -> list[str]:
    """KEYS of apply_outcome and cancel_run: :func:`run_script_keys`, then the dynamic nodes and
    cycles hashes (KEYS[8], KEYS[9])."""
    return [*run_script_keys(run_id), *keys.run_flow_keys(run_id)]


@dataclass(frozen=True, slots=True)
class CreatedRun:
    run_id: str
    created: bool


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
    # Dynamic control flow (graflow_scheduler.directives; "" = the node itself, no directives or limits).
    flow_json: str = ""


@dataclass(frozen=True, slots=True)
class NodeCycle:
    """A dispatched node's cycle and the data of ctx.next_iteration (JSON, b"" = none)."""

    cycle: int
    data_json: bytes = b""


@dataclass(frozen=True, slots=True)
class AppliedOutcome:
    # applied | duplicate | stale | ignored | unknown_run | unknown_node
    code: str
    # Task nodes to dispatch: (node id, attempt).
    ready: tuple[tuple[str, int], ...]
    # A retry to dispatch after a delay: (node id, new attempt, delay ms, lost attempts of the node).
    retry: tuple[str, int, int, int] | None
    run_status: str
    # Nodes to dispatch on a re-run or with iteration data (absent: cycle 0, no data).
    cycles: dict[str, NodeCycle] = field(default_factory=dict)
    # Nodes added by next_task directives: directive index -> node id.
    added: dict[int, str] = field(default_factory=dict)

    @property
    def fenced(self) -> bool:
        """True when the outcome changed nothing (duplicate or stale attempt)."""
        return self.code in ("duplicate", "stale")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse_applied(raw: object) -> AppliedOutcome:
    code, ready_flat, retry_flat, run_status = raw[:4]  # type: ignore[index]
    cycles: dict[str, NodeCycle] = {}
    added: dict[int, str] = {}
    if len(raw) > 4:  # type: ignore[arg-type]
        cycles_flat, added_flat = raw[4]  # type: ignore[index]
        for i in range(0, len(cycles_flat), 3):
            data = cycles_flat[i + 2]
            cycles[_text(cycles_flat[i])] = NodeCycle(
                int(cycles_flat[i + 1]), data if isinstance(data, bytes) else str(data).encode()
            )
        added = {int(added_flat[i]): _text(added_flat[i + 1]) for i in range(0, len(added_flat), 2)}
    ready = tuple((_text(ready_flat[i]), int(ready_flat[i + 1])) for i in range(0, len(ready_flat), 2))
    retry = None
    if retry_flat:
        lost = int(retry_flat[3]) if len(retry_flat) > 3 else 0
        retry = (_text(retry_flat[0]), int(retry_flat[1]), int(retry_flat[2]), lost)
    return AppliedOutcome(
        code=_text(code), ready=ready, retry=retry, run_status=_text(run_status), cycles=cycles, added=added
    )


class RunStore:
    """Writes of run state. ``retention_s``: how long ended runs are kept."""

    def __init__(self, redis: aioredis.Redis, *, retention_s: int, scripts: Scripts | None = None) -> None:
        self.redis = redis
        self.retention_s = retention_s
        self.scripts = scripts or Scripts()

    async def load_scripts(self) -> None:
        await self.scripts.load_into(self.redis)

    async def create_run(
        self,
        plan: Plan,
        *,
        run_id: str,
        graph_hash: str,
        now_ms: int,
        idempotency_key: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> CreatedRun:
        """Create the run with its roots READY; with a taken idempotency key, return that run."""
        run_keys: list[str] = [*run_script_keys(run_id), keys.RUNS_INDEX]
        if idempotency_key:
            run_keys.append(keys.idempotency(idempotency_key))
        roots = set(plan.roots)
        others = [node_id for node_id in plan.nodes if node_id not in roots]
        args: list[str | int] = [
            run_id,
            plan.name,
            graph_hash,
            now_ms,
            json.dumps(dict(labels or {}), separators=(",", ":")),
            json.dumps(list(plan.sinks), separators=(",", ":")),
            idempotency_key,
            self.retention_s,
            len(plan.roots),
            *plan.roots,
            *others,
        ]
        created, existing_id = await self.scripts.call(  # type: ignore[misc]
            self.redis, self.scripts.create_run, run_keys, args
        )
        return CreatedRun(run_id=_text(existing_id), created=bool(int(created)))

    async def apply_outcomes(
        self, outcomes: Sequence[OutcomeToApply], *, now_ms: int
    ) -> list[AppliedOutcome]:
        """Apply a batch of outcomes in one pipeline (one script call each), results in order."""
        if not outcomes:
            return []
        calls = [
            (
                flow_script_keys(o.run_id),
                [
                    o.run_id,
                    o.node_id,
                    o.attempt,
                    "S" if o.succeeded else "F",
                    o.error,
                    o.worker_id,
                    now_ms,
                    o.retry_delay_ms,
                    o.closure_json,
                    self.retention_s,
                    IDEMPOTENCY_PREFIX,
                    "1" if o.worker_lost else "0",
                    o.flow_json,
                ],
            )
            for o in outcomes
        ]
        raw = await self.scripts.call_many(self.redis, self.scripts.apply_outcome, calls)
        return [_parse_applied(r) for r in raw]

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
        """Cancel a RUNNING run; returns the run's status afterwards (an ended run is unchanged).
        Raises :class:`RunNotFound`."""
        status = await self.scripts.call(
            self.redis,
            self.scripts.cancel_run,
            flow_script_keys(run_id),
            [run_id, reason, now_ms, self.retention_s, IDEMPOTENCY_PREFIX],
        )
        text = _text(status)
        if not text:
            raise RunNotFound(run_id)
        return text
