"""The run list (``/`` and ``/runs``, with live counts) and the registered workflows
(``/workflows``, ``/workflows/{name}`` with the form that submits one)."""

from __future__ import annotations

import json
import secrets
import uuid
from datetime import UTC, datetime
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from graflow.run import parse_status, status_name
from graflow_api.v1 import scheduler_pb2
from graflow_runtime.user_json import UserJsonError, loads

from graflow_console.backend import ConsoleError
from graflow_console.web import SessionDep, flash, posted_form, render

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
RUN_STATUSES = ("RUNNING", "PAUSED", "SUCCEEDED", "FAILED", "CANCELED")


def bad_input(message: str) -> ConsoleError:
    return ConsoleError(400, "INVALID_ARGUMENT", message)


def parse_labels(text: str) -> dict[str, str]:
    """``key=value`` pairs separated by commas (or new lines)."""
    labels = {}
    for pair in text.replace("\n", ",").split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise bad_input(f"label {pair!r} is not key=value")
        labels[key.strip()] = value.strip()
    return labels


def parse_time_ms(field: str, text: str) -> int:
    """A ``datetime-local`` value (read as UTC, as the pages show times) in epoch milliseconds."""
    if not text:
        return 0
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise bad_input(f"{field} {text!r} is not a date and time (YYYY-MM-DDTHH:MM)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@router.get("/")
async def home() -> Response:
    return RedirectResponse("/runs", status_code=303)


@router.get("/runs")
async def runs(
    request: Request,
    session: SessionDep,
    status: str = "",
    workflow: str = "",
    label: str = "",
    created_after: str = "",
    created_before: str = "",
    page_token: str = "",
) -> Response:
    # Status in any case, as the API and the CLI take it; the form shows it upper case.
    status = status.strip().upper()
    filters = {"status": status, "workflow": workflow, "label": label,
               "created_after": created_after, "created_before": created_before}
    query = {name: value for name, value in filters.items() if value}
    context: dict[str, object] = {"filters": filters, "statuses": RUN_STATUSES, "status_name": status_name}
    try:
        if status and status not in RUN_STATUSES:
            raise bad_input(f"status {status!r} is not one of {', '.join(RUN_STATUSES)}")
        listing = await session.person.scheduler("ListRuns", scheduler_pb2.ListRunsRequest(
            limit=PAGE_SIZE,
            status=parse_status(status or None),
            page_token=page_token,
            workflow_name=workflow.strip(),
            labels=parse_labels(label),
            created_after_ms=parse_time_ms("created after", created_after),
            created_before_ms=parse_time_ms("created before", created_before),
        ))
    except ConsoleError as exc:
        if exc.status_code != 400:
            raise
        # A filter the page or the scheduler refuses: said above the form, which keeps its values.
        return render(request, "runs.html", {
            **context, "runs": [], "next_url": "", "first_url": "", "counts": await _counts(session),
        }, session=session, status_code=400, error=exc.message)
    next_url = ""
    if listing.next_page_token:
        next_url = "/runs?" + urlencode({**query, "page_token": listing.next_page_token})
    return render(request, "runs.html", {
        **context,
        "runs": list(listing.runs),
        "next_url": next_url,
        "first_url": "/runs?" + urlencode(query) if page_token else "",
        "counts": await _counts(session),
    }, session=session)


async def _counts(session: SessionDep) -> dict[str, object]:
    """Counts by status for ``#run-counts``; a role that may not count sees why instead."""
    try:
        reply = await session.person.scheduler("CountRuns", scheduler_pb2.CountRunsRequest())
    except ConsoleError as exc:
        return {"error": exc.message}
    by_status = {status_name(entry.status): entry.count for entry in reply.counts}
    return {"total": reply.total, "by_status": [(s, by_status.get(s, 0)) for s in RUN_STATUSES]}


@router.get("/runs/counts")
async def run_counts(request: Request, session: SessionDep) -> Response:
    """The live counts alone (htmx refreshes ``#run-counts`` with it)."""
    return render(request, "run_counts.html", {"counts": await _counts(session)}, session=session)


@router.get("/workflows")
async def workflows(request: Request, session: SessionDep) -> Response:
    reply = await session.person.scheduler("ListWorkflows", scheduler_pb2.ListWorkflowsRequest())
    return render(request, "workflows.html", {"workflows": list(reply.workflows)}, session=session)


@router.get("/workflows/{name}")
async def workflow(request: Request, session: SessionDep, name: str) -> Response:
    registered = await session.person.scheduler("GetWorkflow", scheduler_pb2.GetWorkflowRequest(name=name))
    defaults = json.loads(registered.default_arguments_json) if registered.default_arguments_json else {}
    return render(request, "workflow.html", {
        "workflow": registered,
        "arguments": json.dumps(defaults, indent=2, sort_keys=True),
        "labels": "",
        # One key per render of the form: a double click, a resent POST or a SubmitRun that gRPC
        # retries after a replica died (grpc_options.IDEMPOTENT_METHODS) all return the same run.
        "idempotency_key": secrets.token_urlsafe(18),
    }, session=session)


@router.post("/workflows/{name}/runs")
async def submit(request: Request, name: str) -> Response:
    """Submit the registered workflow with the form's arguments (a JSON object) and labels."""
    session, form = await posted_form(request)
    arguments = str(form.get("arguments") or "{}")
    labels = str(form.get("labels") or "")
    # The form's key (see workflow()); a form without one (an older page, a script) still gets one,
    # so that gRPC's retry of SubmitRun cannot create a second run.
    idempotency_key = str(form.get("idempotency_key") or f"console-{uuid.uuid4()}")
    try:
        value = loads(arguments)
        if not isinstance(value, dict):
            raise bad_input("arguments must be a JSON object ({\"name\": value, ...})")
        reply = await session.person.scheduler("SubmitRun", scheduler_pb2.SubmitRunRequest(
            workflow=name, arguments_json=arguments.encode(), labels=parse_labels(labels),
            idempotency_key=idempotency_key,
        ))
    except (ConsoleError, UserJsonError) as exc:
        error = exc if isinstance(exc, ConsoleError) else bad_input(f"arguments: {exc}")
        registered = await session.person.scheduler(
            "GetWorkflow", scheduler_pb2.GetWorkflowRequest(name=name))
        # The same key again: nothing was created under it, unless the submit failed after the
        # scheduler stored the run, and then submitting again must return that run.
        return render(request, "workflow.html", {"workflow": registered, "arguments": arguments,
                                                 "labels": labels, "idempotency_key": idempotency_key},
                      session=session, status_code=error.status_code, error=error.message)
    response = RedirectResponse(f"/runs/{reply.run_id}", status_code=303)
    flash(response, request, "ok", f"run {reply.run_id} of {name} submitted")
    return response
