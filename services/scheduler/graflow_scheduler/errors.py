"""Exceptions of the scheduler's domain (mapped to gRPC status codes by the servicer)."""

from __future__ import annotations


class SpecError(ValueError):
    """The submitted workflow is invalid; the message says what to fix (INVALID_ARGUMENT)."""


class RunNotFound(LookupError):
    """No run with this id (never created, or expired after the retention period)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} not found (unknown id, or expired after the retention period)")
        self.run_id = run_id


class GraphNotFound(LookupError):
    """The result-store has no graph with this hash."""

    def __init__(self, graph_hash: str) -> None:
        super().__init__(f"graph {graph_hash} not found in the result-store")
        self.graph_hash = graph_hash


class ParentEnded(RuntimeError):
    """A child run was submitted for a parent run that has ended."""

    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(f"parent run {run_id} has ended ({status}): it cannot start child runs")
        self.run_id = run_id
        self.status = status
