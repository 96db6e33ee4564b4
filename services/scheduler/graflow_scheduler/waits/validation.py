"""What a wait may ask and what an answer may say: the checks of a task's feedback request (its
WAITING outcome) and of an answer (``RespondFeedback``), with their limits. Pure Python, no I/O."""

from __future__ import annotations

import re

from graflow_api.v1 import feedback_pb2
from graflow_runtime import user_json

Kind = feedback_pb2.FeedbackKind
# Wait ids: a feedback request's id, or CHILD_PREFIX + the child run's id. No ":" in request ids
# (the waits hash keeps answers under "<id>:r", child waits as "child:<run>") and no "@".
REQUEST_ID = re.compile(r"[A-Za-z0-9_.\-]{1,200}")
CHILD_PREFIX = "child:"
PROMPT_MAX = 16 * 1024
OPTIONS_MAX = 1000
OPTION_MAX = 1024
METADATA_MAX = 64 * 1024
TEXT_MAX = 64 * 1024
CUSTOM_MAX = 256 * 1024
REASON_MAX = 4096
RESPONDER_MAX = 256


def _json_problem(raw: bytes, what: str, limit: int, *, object_only: bool = False) -> str | None:
    if len(raw) > limit:
        return f"{what} is {len(raw)} bytes; the limit is {limit}"
    try:
        value = user_json.loads(raw)
    except user_json.UserJsonError as exc:
        return f"{what} is {exc}"
    if object_only and not isinstance(value, dict):
        return f"{what} must be a JSON object"
    return None


def request_problem(request: feedback_pb2.FeedbackRequest) -> str | None:
    """Why a task's feedback request cannot be recorded (None when it can)."""
    if not REQUEST_ID.fullmatch(request.request_id):
        return f"request_id {request.request_id[:64]!r} must be 1-200 letters, digits, '_', '-' or '.'"
    if request.kind not in Kind.values() or request.kind == Kind.FEEDBACK_KIND_UNSPECIFIED:
        return f"kind {request.kind} is not a FeedbackKind"
    if not request.prompt.strip():
        return "prompt is empty: say what the person is asked"
    if len(request.prompt) > PROMPT_MAX:
        return f"prompt is {len(request.prompt)} characters; the limit is {PROMPT_MAX}"
    if request.kind in (Kind.FEEDBACK_KIND_SELECTION, Kind.FEEDBACK_KIND_MULTI_SELECTION):
        options = list(request.options)
        if not options:
            return f"a {Kind.Name(request.kind)} request needs options"
        if len(options) > OPTIONS_MAX or any(not o or len(o) > OPTION_MAX for o in options):
            return f"options: at most {OPTIONS_MAX}, each 1-{OPTION_MAX} characters"
        if len(set(options)) != len(options):
            return "options repeat a choice"
    if request.metadata_json:
        problem = _json_problem(request.metadata_json, "metadata_json", METADATA_MAX, object_only=True)
        if problem:
            return problem
    if request.on_timeout not in feedback_pb2.FeedbackTimeoutAction.values():
        return f"on_timeout {request.on_timeout} is not a FeedbackTimeoutAction"
    return None


def response_problem(
    request: feedback_pb2.FeedbackRequest, response: feedback_pb2.FeedbackResponse
) -> str | None:
    """Why ``response`` does not answer ``request`` (None when it does)."""
    if response.request_id and response.request_id != request.request_id:
        return f"response.request_id {response.request_id!r} is not the request's id {request.request_id!r}"
    if len(response.reason) > REASON_MAX or len(response.responded_by) > RESPONDER_MAX:
        return f"reason and responded_by are limited to {REASON_MAX} and {RESPONDER_MAX} characters"
    kind = request.kind
    options = set(request.options)
    foreign = sorted(_answer_fields(response) - {_ANSWER_FIELDS.get(kind)})
    if foreign:
        return (
            f"this request asks for {Kind.Name(kind).removeprefix('FEEDBACK_KIND_').lower()}; "
            f"the answer sets {', '.join(foreign)}, which belong to other kinds"
        )
    if kind == Kind.FEEDBACK_KIND_APPROVAL:
        if not response.HasField("approved"):
            return "this request asks for approval: set response.approved (true or false)"
    elif kind == Kind.FEEDBACK_KIND_TEXT:
        if not response.text:
            return "this request asks for text: set response.text"
        if len(response.text) > TEXT_MAX:
            return f"text is {len(response.text)} characters; the limit is {TEXT_MAX}"
    elif kind == Kind.FEEDBACK_KIND_SELECTION:
        if response.selected not in options:
            return f"selected {response.selected!r} is not one of the options {sorted(options)}"
    elif kind == Kind.FEEDBACK_KIND_MULTI_SELECTION:
        chosen = list(response.selected_multiple)
        unknown = [c for c in chosen if c not in options]
        if unknown:
            return f"selected_multiple has {unknown} that are not among the options {sorted(options)}"
        if len(set(chosen)) != len(chosen):
            return "selected_multiple repeats a choice"
    elif kind == Kind.FEEDBACK_KIND_CUSTOM:
        if not response.custom_json:
            return "this request asks for a custom JSON value: set response.custom_json"
        return _json_problem(response.custom_json, "custom_json", CUSTOM_MAX)
    return None


# The answer field of each kind.
_ANSWER_FIELDS = {
    Kind.FEEDBACK_KIND_APPROVAL: "approved",
    Kind.FEEDBACK_KIND_TEXT: "text",
    Kind.FEEDBACK_KIND_SELECTION: "selected",
    Kind.FEEDBACK_KIND_MULTI_SELECTION: "selected_multiple",
    Kind.FEEDBACK_KIND_CUSTOM: "custom_json",
}


def _answer_fields(response: feedback_pb2.FeedbackResponse) -> set[str]:
    """The answer fields ``response`` sets (an empty multi-selection sets none: "none of them")."""
    found = {"approved"} if response.HasField("approved") else set()
    others = ("text", "selected", "selected_multiple", "custom_json")
    return found | {field for field in others if getattr(response, field)}
