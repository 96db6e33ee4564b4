"""A feedback request's page (``/runs/{run_id}/feedback/{request_id}``, the page a webhook
notification links to): the prompt, and a form that fits the request's kind (approve/reject, text,
one option, several options, custom JSON), answered with RespondFeedback as the signed-in person."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from starlette.datastructures import FormData

from graflow.run import status_name
from graflow_api.v1 import feedback_pb2, scheduler_pb2
from graflow_runtime.user_json import UserJsonError, loads

from graflow_console.auth import Session
from graflow_console.backend import ConsoleError
from graflow_console.web import SessionDep, flash, posted_form, render

router = APIRouter(include_in_schema=False)


def kind_name(kind: int) -> str:
    return feedback_pb2.FeedbackKind.Name(kind).removeprefix("FEEDBACK_KIND_")


def state_name(state: int) -> str:
    return feedback_pb2.FeedbackState.Name(state).removeprefix("FEEDBACK_STATE_")


def answer_of(
    request: feedback_pb2.FeedbackRequest, form: FormData, who: str
) -> feedback_pb2.FeedbackResponse:
    """The form's answer in the field of the request's kind (the scheduler checks it fits)."""
    answer = feedback_pb2.FeedbackResponse(
        request_id=request.request_id, reason=str(form.get("reason") or ""), responded_by=who)
    kind = kind_name(request.kind)
    if kind == "APPROVAL":
        decision = form.get("decision")
        if decision not in ("approve", "reject"):
            raise ConsoleError(400, "INVALID_ARGUMENT", "choose approve or reject")
        answer.approved = decision == "approve"
    elif kind == "TEXT":
        answer.text = str(form.get("text") or "")
    elif kind == "SELECTION":
        answer.selected = str(form.get("selected") or "")
    elif kind == "MULTI_SELECTION":
        answer.selected_multiple.extend(str(v) for v in form.getlist("selected_multiple"))
    elif kind == "CUSTOM":
        text = str(form.get("custom_json") or "")
        try:
            loads(text)
        except UserJsonError as exc:
            raise ConsoleError(400, "INVALID_ARGUMENT", f"the answer is not valid JSON: {exc}") from None
        answer.custom_json = text.encode()
    return answer


def _context(request: feedback_pb2.FeedbackRequest) -> dict[str, object]:
    metadata = {}
    if request.metadata_json:
        try:
            metadata = json.loads(request.metadata_json)
        except ValueError:
            metadata = {"metadata": request.metadata_json.decode(errors="replace")}
    return {"fb": request, "kind": kind_name(request.kind), "state": state_name(request.state),
            "metadata": metadata, "closed_why": ""}


async def _get(session: Session, run_id: str, request_id: str) -> feedback_pb2.FeedbackRequest:
    return await session.person.scheduler(
        "GetFeedback", scheduler_pb2.GetFeedbackRequest(run_id=run_id, request_id=request_id))


@router.get("/runs/{run_id}/feedback/{request_id}")
async def feedback_page(request: Request, session: SessionDep, run_id: str, request_id: str) -> Response:
    fb = await _get(session, run_id, request_id)
    return render(request, "feedback.html", {**_context(fb), "closed_why": await _closed_why(session, fb)},
                  session=session)


async def _closed_why(session: Session, fb: feedback_pb2.FeedbackRequest) -> str:
    """Why a CLOSED request can no longer be answered, as far as its run tells ("" otherwise)."""
    if fb.state != feedback_pb2.FEEDBACK_STATE_CLOSED:
        return ""
    try:
        run = await session.person.scheduler("GetRun", scheduler_pb2.GetRunRequest(run_id=fb.run_id))
    except ConsoleError:
        return "It can no longer be answered."
    status = status_name(run.status)
    if fb.deadline_ms and (not run.ended_at_ms or run.ended_at_ms >= fb.deadline_ms):
        return "It timed out: no answer came before its deadline."
    if status == "CANCELED":
        return "Its run was canceled while it waited" + (f" ({run.message})." if run.message else ".")
    if status in ("SUCCEEDED", "FAILED"):
        return f"Its run ended ({status}) while it waited."
    return "It can no longer be answered."


@router.post("/runs/{run_id}/feedback/{request_id}")
async def answer(request: Request, run_id: str, request_id: str) -> Response:
    session, form = await posted_form(request)
    fb = await _get(session, run_id, request_id)
    try:
        reply = await session.person.scheduler("RespondFeedback", scheduler_pb2.RespondFeedbackRequest(
            run_id=run_id, request_id=request_id,
            response=answer_of(fb, form, f"console (token {session.fingerprint}…)")))
    except ConsoleError as exc:
        return render(request, "feedback.html", _context(fb), session=session,
                      status_code=exc.status_code, error=exc.message)
    response = RedirectResponse(f"/runs/{run_id}", status_code=303)
    flash(response, request, "ok", f"answered {reply.request_id}")
    return response
