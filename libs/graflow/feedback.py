"""Human in the loop and child runs: the SDK side of waits.

A task asks for feedback with ``ctx.request_feedback(...)`` (or ``request_approval``,
``request_text_input``, ``request_selection``). The first time, there is no answer: the call raises
:class:`WaitRequested`, the worker ends the attempt with a WAITING outcome and the node is parked,
holding no worker. Once somebody answers (``graflow feedback respond``, ``Client.respond_feedback``
or the ``RespondFeedback`` RPC), the node runs again and the same call returns the answer. Code
before the call therefore runs again: keep it idempotent or store progress with
``ctx.checkpoint``. Each call of an attempt is named ``"<node>.<cycle>.<n>"`` unless it passes its
own ``feedback_id`` (calls with their own id are not counted), so a task may ask several questions
in turn; a task whose questions differ between its runs should name them.

A task can also wait for a child run it started (``ctx.run_child``), the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from graflow import payload
from graflow.errors import ChildRunError as ChildRunError  # re-exported: its import path before 0.10
from graflow_api.v1 import feedback_pb2, messages_pb2

KINDS: dict[str, int] = {
    "approval": feedback_pb2.FEEDBACK_KIND_APPROVAL,
    "text": feedback_pb2.FEEDBACK_KIND_TEXT,
    "selection": feedback_pb2.FEEDBACK_KIND_SELECTION,
    "multi_selection": feedback_pb2.FEEDBACK_KIND_MULTI_SELECTION,
    "custom": feedback_pb2.FEEDBACK_KIND_CUSTOM,
}
ON_TIMEOUT: dict[str, int] = {
    "fail": feedback_pb2.FEEDBACK_TIMEOUT_ACTION_FAIL,
    "keep_waiting": feedback_pb2.FEEDBACK_TIMEOUT_ACTION_KEEP_WAITING,
}


# ``custom_data`` not given (None is an answer: JSON null).
NOT_GIVEN: Any = object()
MIN_TIMEOUT_S = 0.001
MAX_TIMEOUT_S = (2**32 - 1) / 1000  # FeedbackRequest.timeout_ms is a uint32 (about 49 days)


class WaitRequested(BaseException):  # noqa: N818 - a signal to the worker, not an error
    """Raised by a context call that must wait (no answer yet, child run not ended). It derives
    from BaseException so that a task's ``except Exception`` does not swallow it; let it pass."""

    def __init__(self, wait: messages_pb2.Wait, description: str) -> None:
        super().__init__(description)
        self.wait = wait


@dataclass(frozen=True)
class FeedbackResponse:
    """An answer, as the task (or a client) sees it. ``custom_data`` is the decoded JSON value of a
    custom request; ``responded_at_ms`` is when the scheduler recorded it."""

    request_id: str
    approved: bool = False
    reason: str = ""
    text: str = ""
    selected: str = ""
    selected_multiple: list[str] = field(default_factory=list)
    custom_data: Any = None
    responded_by: str = ""
    responded_at_ms: int = 0

    @classmethod
    def from_proto(cls, message: feedback_pb2.FeedbackResponse) -> FeedbackResponse:
        return cls(
            request_id=message.request_id,
            approved=message.approved,
            reason=message.reason,
            text=message.text,
            selected=message.selected,
            selected_multiple=list(message.selected_multiple),
            custom_data=json.loads(message.custom_json) if message.custom_json else None,
            responded_by=message.responded_by,
            responded_at_ms=message.responded_at_ms,
        )


def kind_of(feedback_type: str | int) -> int:
    if isinstance(feedback_type, int) and feedback_type in KINDS.values():
        return feedback_type
    kind = KINDS.get(str(feedback_type).lower().replace("-", "_"))
    if kind is None:
        raise ValueError(f"feedback type {feedback_type!r} is not one of {', '.join(KINDS)}")
    return kind


def build_request(
    request_id: str,
    feedback_type: str | int,
    prompt: str,
    *,
    options: Iterable[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    timeout: float | None = None,
    on_timeout: str = "fail",
) -> feedback_pb2.FeedbackRequest:
    """A FeedbackRequest, checked here so that a mistake fails the task with a clear message
    (the scheduler checks again for workers in other languages)."""
    kind = kind_of(feedback_type)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("request_feedback needs a prompt: say what the person is asked")
    choices = [str(o) for o in options or ()]
    if kind in (feedback_pb2.FEEDBACK_KIND_SELECTION, feedback_pb2.FEEDBACK_KIND_MULTI_SELECTION):
        if not choices:
            raise ValueError("a selection request needs options")
        if len(set(choices)) != len(choices):
            raise ValueError(f"options repeat a choice: {choices}")
    if on_timeout not in ON_TIMEOUT:
        raise ValueError(f"on_timeout {on_timeout!r} is not one of {', '.join(ON_TIMEOUT)}")
    if timeout is not None and not MIN_TIMEOUT_S <= timeout <= MAX_TIMEOUT_S:
        raise ValueError(
            f"timeout must be between {MIN_TIMEOUT_S} s and {MAX_TIMEOUT_S / 86400:.1f} days "
            f"(or None for no deadline), not {timeout!r} s"
        )
    return feedback_pb2.FeedbackRequest(
        request_id=request_id,
        kind=kind,
        prompt=prompt,
        options=choices,
        metadata_json=payload.dumps(dict(metadata)) if metadata else b"",
        timeout_ms=round(timeout * 1000) if timeout else 0,
        on_timeout=ON_TIMEOUT[on_timeout],
    )


def build_response(
    *,
    approved: bool | None = None,
    reason: str = "",
    text: str | None = None,
    selected: str | None = None,
    selected_multiple: Iterable[str] | None = None,
    custom_data: Any = NOT_GIVEN,
    responded_by: str = "",
) -> feedback_pb2.FeedbackResponse:
    """A FeedbackResponse for ``Client.respond_feedback`` (set the field of the request's kind;
    ``custom_data=None`` answers a custom request with JSON null)."""
    return feedback_pb2.FeedbackResponse(
        approved=approved,
        reason=reason,
        text=text or "",
        selected=selected or "",
        selected_multiple=list(selected_multiple or ()),
        custom_json=b"" if custom_data is NOT_GIVEN else payload.dumps(custom_data),
        responded_by=responded_by,
    )
