"""Run state transitions in Redis: create a run, apply outcomes (pipelined per batch), cancel.

Each transition is one Lua script (atomic, idempotent); see the ``*.lua`` files beside this
module and "Redis keys" in docs/architecture.md for the layout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from graflow_runtime import keys

from graflow_scheduler.errors import RunNotFound
from graflow_scheduler.plan import Plan
from graflow_scheduler.scripts import Scripts

IDEMPOTENCY_PREFIX = keys.idempotency("")


def run_script_keys(run_id: str) -> list[str]:
    """KEYS[1..7] of every run script: the run's six keys and the active-runs set."""
    return [*keys.run_keys(run_id), keys.ACTIVE_RUNS]


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


@dataclass(frozen=True, slots=True)
class AppliedOutcome:
    # applied | duplicate | stale | ignored | unknown_run | unknown_node
    code: str
    # Task nodes to dispatch: (node id, attempt).
    ready: tuple[tuple[str, int], ...]
    # A retry to dispatch after a delay: (node id, new attempt, delay ms).
    retry: tuple[str, int, int] | None
    run_status: str

    @property
    def fenced(self) -> bool:
        """True when the outcome changed nothing (duplicate or stale attempt)."""
        return self.code in ("duplicate", "stale")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse_applied(raw: object) -> AppliedOutcome:
    code, ready_flat, retry_flat, run_status = raw  # type: ignore[misc]
    ready = tuple((_text(ready_flat[i]), int(ready_flat[i + 1])) for i in range(0, len(ready_flat), 2))
    retry = (_text(retry_flat[0]), int(retry_flat[1]), int(retry_flat[2])) if retry_flat else None
    return AppliedOutcome(code=_text(code), ready=ready, retry=retry, run_status=_text(run_status))


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
                run_script_keys(o.run_id),
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
                ],
            )
            for o in outcomes
        ]
        raw = await self.scripts.call_many(self.redis, self.scripts.apply_outcome, calls)
        return [_parse_applied(r) for r in raw]

    async def cancel_run(self, run_id: str, reason: str, *, now_ms: int) -> str:
        """Cancel a RUNNING run; returns the run's status afterwards (an ended run is unchanged).
        Raises :class:`RunNotFound`."""
        status = await self.scripts.call(
            self.redis,
            self.scripts.cancel_run,
            run_script_keys(run_id),
            [run_id, reason, now_ms, self.retention_s, IDEMPOTENCY_PREFIX],
        )
        text = _text(status)
        if not text:
            raise RunNotFound(run_id)
        return text
