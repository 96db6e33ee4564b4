"""Exceptions of the scheduler's domain. Each is a :class:`graflow_runtime.errors.ServiceError`
carrying the gRPC status its caller receives: handlers let them propagate, and the server's one
interceptor (``graflow_runtime.grpc_server.create_server``) turns them into that status."""

from __future__ import annotations

import grpc

from graflow_runtime.errors import FailedPrecondition, InvalidRequest, NotFound, ServiceError


class SpecError(InvalidRequest):
    """The submitted workflow is invalid; the message says what to fix (INVALID_ARGUMENT)."""


class BadPageToken(InvalidRequest):
    """A ListRuns page token that this service did not issue."""


class RunNotFound(NotFound):
    """No run with this id (never created, or expired after the retention period)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} not found (unknown id, or expired after the retention period)")
        self.run_id = run_id


class GraphNotFound(NotFound):
    """The result-store has no graph with this hash."""

    def __init__(self, graph_hash: str) -> None:
        super().__init__(f"graph {graph_hash} not found in the result-store")
        self.graph_hash = graph_hash


class FeedbackNotFound(NotFound):
    """No feedback request with this id in the run (or an id that cannot be one)."""


class FeedbackRejected(ServiceError, ValueError):
    """An answer that cannot be taken: ``code`` is the gRPC status to return (INVALID_ARGUMENT for
    an answer that does not fit the request, FAILED_PRECONDITION for one that comes too late)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class ParentNotFound(NotFound):
    """A child run was submitted for a parent run that does not exist."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"parent run {run_id} does not exist")


class ParentNodeUnknown(InvalidRequest):
    """A child run was submitted for a node that its parent run does not have."""

    def __init__(self, run_id: str, node_id: str) -> None:
        super().__init__(f"parent.node_id {node_id!r} names no node of run {run_id}")


class ParentEnded(FailedPrecondition):
    """A child run was submitted for a parent run that has ended."""

    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(f"parent run {run_id} has ended ({status}): it cannot start child runs")
        self.run_id = run_id
        self.status = status
