"""Exceptions users of the SDK see or raise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class GraflowError(Exception):
    """Base class of every Graflow SDK error."""


class WorkflowDefinitionError(GraflowError, ValueError):
    """A workflow was built wrongly (duplicate node id, unsupported composition, ...)."""


class NonRetryableError(GraflowError):
    """Raise from a task to fail its node at once, whatever its retry policy."""


class PayloadError(GraflowError, TypeError):
    """A value can't be carried as JSON or bytes (Graflow never pickles)."""


@dataclass(frozen=True)
class TaskError:
    """One failed node: which node, the exception type, message and traceback summary."""

    node_id: str
    type: str
    message: str
    traceback: str = ""

    def __str__(self) -> str:
        return f"{self.node_id}: {self.type}: {self.message}"


class RunError(GraflowError):
    """A run did not succeed."""

    def __init__(self, run_id: str, message: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class RunFailedError(RunError):
    """The run failed; ``error`` says which node failed, with what."""

    def __init__(self, run_id: str, error: TaskError) -> None:
        super().__init__(run_id, f"run {run_id} failed at {error}")
        self.error = error


class GroupFailedError(RunFailedError):
    """A parallel group failed its policy; lists which members failed and which succeeded."""

    def __init__(self, run_id: str, error: TaskError, failed: Sequence[TaskError],
                 succeeded: Sequence[str]) -> None:
        super().__init__(run_id, error)
        self.failed = list(failed)
        self.succeeded = list(succeeded)


class RunCanceledError(RunError):
    """The run was canceled (by a client or by a task)."""


class TaskCanceledError(NonRetryableError):
    """Raised by ``ctx.check_canceled()`` in a task whose run was canceled."""


class RunNotFoundError(GraflowError, LookupError):
    """No run with that id."""


class FeedbackError(GraflowError):
    """A feedback answer was refused: the request does not exist, is closed or answered already,
    or the answer does not fit it (the message says which)."""
