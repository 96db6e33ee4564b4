"""Retry and parallel-group policies, mapped one to one onto the contracts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from graflow_api.v1 import common_pb2, workflow_pb2
from graflow_runtime.limits import DEFAULT_BACKOFF_FACTOR


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a failed task up to ``max_attempts`` times in total, waiting
    ``initial_interval * backoff_factor ** (attempt - 1)`` seconds (at most ``max_interval``,
    spread by +/- ``jitter``) between attempts."""

    max_attempts: int = 3
    initial_interval: float = 1.0
    backoff_factor: float = DEFAULT_BACKOFF_FACTOR
    max_interval: float = 60.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.initial_interval < 0 or self.max_interval < 0:
            raise ValueError("intervals must be >= 0")
        if self.backoff_factor < 1:
            raise ValueError("backoff_factor must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")

    def to_proto(self) -> common_pb2.RetryPolicy:
        return common_pb2.RetryPolicy(
            max_attempts=self.max_attempts,
            initial_interval_ms=round(self.initial_interval * 1000),
            backoff_factor=self.backoff_factor,
            max_interval_ms=round(self.max_interval * 1000),
            jitter=self.jitter,
        )


@dataclass(frozen=True)
class GroupPolicy:
    """How a parallel group's join decides. Build with :func:`strict`, :func:`best_effort`,
    :func:`at_least` or :func:`critical`."""

    kind: str = "strict"
    min_success: int = 0
    critical_ids: tuple[str, ...] = field(default_factory=tuple)

    def to_proto(self) -> workflow_pb2.GroupPolicy:
        kinds = {
            "strict": workflow_pb2.GroupPolicy.KIND_STRICT,
            "best_effort": workflow_pb2.GroupPolicy.KIND_BEST_EFFORT,
            "at_least": workflow_pb2.GroupPolicy.KIND_AT_LEAST_N,
            "critical": workflow_pb2.GroupPolicy.KIND_CRITICAL,
        }
        return workflow_pb2.GroupPolicy(
            kind=kinds[self.kind], min_success=self.min_success, critical_ids=list(self.critical_ids)
        )


def strict() -> GroupPolicy:
    """Every member must succeed (the default)."""
    return GroupPolicy("strict")


def best_effort() -> GroupPolicy:
    """Go on once every member finished, whatever their outcome."""
    return GroupPolicy("best_effort")


def at_least(n: int) -> GroupPolicy:
    """Go on once ``n`` members succeeded."""
    if n < 1:
        raise ValueError("at_least(n) needs n >= 1")
    return GroupPolicy("at_least", min_success=n)


def critical(*tasks: object) -> GroupPolicy:
    """Fail only if one of ``tasks`` (task functions, nodes or node ids) fails."""
    ids = _ids(tasks)
    if not ids:
        raise ValueError("critical() needs at least one task")
    return GroupPolicy("critical", critical_ids=ids)


def _ids(items: Iterable[object]) -> tuple[str, ...]:
    out = []
    for item in items:
        node_id = item if isinstance(item, str) else getattr(item, "node_id", None)
        if not isinstance(node_id, str):
            raise TypeError(f"expected a task, node or node id, got {item!r}")
        out.append(node_id)
    return tuple(out)


def from_name(name: str) -> GroupPolicy:
    """Graflow's string spellings: "strict", "best_effort"."""
    if name == "strict":
        return strict()
    if name == "best_effort":
        return best_effort()
    raise ValueError(f"unknown group policy {name!r}; use strict, best_effort, at_least(n) or critical(...)")
