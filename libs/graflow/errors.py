"""Exceptions users of the SDK see or raise: every one derives from :class:`GraflowError`.

Some were first defined beside the code that raises them; those modules still export them under
their old names (``graflow.client.ServiceUnavailableError``, ``graflow.client.ServiceCallError``,
``graflow.operators.DeadLetterNotFoundError``, ``graflow.feedback.ChildRunError``,
``graflow.cli.base.UsageError``, ``graflow.cli.devstack.LocalStackError``).

:class:`graflow.feedback.WaitRequested` is not here on purpose: it is not an error but the signal a
waiting context call sends to the worker running the task (a ``BaseException``, so that a task's
``except Exception`` lets it through). No user catches or raises it, and it carries the contract's
``Wait`` message, which belongs with the rest of the waits in :mod:`graflow.feedback`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc


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


class ChildRunError(NonRetryableError):
    """A child run the task waited for failed or was canceled."""

    def __init__(self, run_id: str, status: str, message: str) -> None:
        super().__init__(f"child run {run_id} ended {status}: {message}")
        self.run_id = run_id
        self.status = status


class ServiceUnavailableError(GraflowError, ConnectionError):
    """A Graflow service did not answer (not running, wrong address, or overloaded)."""

    def __init__(self, service: str, address: str, detail: str) -> None:
        super().__init__(
            f"cannot reach the {service} at {address}: is it running? start a local stack with "
            f"`graflow dev --keep` ({detail})"
        )
        self.service = service
        self.address = address


class ServiceCallError(GraflowError):
    """A service refused a call for a reason other than the ones the SDK maps to its own errors."""

    def __init__(self, service: str, address: str, method: str, code: grpc.StatusCode, details: str) -> None:
        hint = ""
        if code == grpc.StatusCode.UNAUTHENTICATED:
            hint = " (pass auth_token=... to Client or set GRAFLOW_CLIENT_AUTH_TOKEN)"
        elif code == grpc.StatusCode.PERMISSION_DENIED:
            hint = " (use a token of a role it is for; docs/security.md lists who may call what)"
        super().__init__(f"the {service} at {address} refused {method}: {code.name}: {details}{hint}")
        self.code = code
        self.details = details


class DeadLetterNotFoundError(GraflowError, LookupError):
    """No dead letter has that id (already replayed, or never existed)."""


class WorkflowNotFoundError(GraflowError, LookupError):
    """No workflow is registered under that name (``Client.register_workflow`` registers one)."""


class UsageError(GraflowError):
    """Bad command-line input; the message says what to type instead."""


class LocalStackError(GraflowError, RuntimeError):
    """A process of the local stack did not start or is unknown; the message holds its log tail."""
