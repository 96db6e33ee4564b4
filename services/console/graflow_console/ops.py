"""The operators' pages: workers, queues and dead letters, answered by the coordinator.

Reads need the ``viewer`` role (ListWorkers, ListQueues, ListDeadLetters); replaying and deleting a
dead letter need ``admin`` (docs/security.md). The console does not check roles itself: it calls
with the signed-in person's token and shows the coordinator's refusal in ``#flash.error`` with the
status it maps to (403 for PERMISSION_DENIED), so the rule lives in one place, the services.

The workers and queues tables refresh themselves with htmx (``hx-get`` of the same page every few
seconds, ``hx-select`` of the table), which needs no endpoint of its own and no script of ours.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse

from graflow_api.v1 import coordinator_pb2

from graflow_console.auth import Session
from graflow_console.backend import ConsoleError
from graflow_console.web import SessionDep, duration_text, flash, posted_form, render, time_text

router = APIRouter(include_in_schema=False)

REFRESH_S = 5
# A worker whose last heartbeat is older than this is shown "late": above the coordinator's default
# heartbeat interval (20 s), below its default lease timeout (40 s), after which it is declared dead
# and leaves the list.
LATE_AFTER_MS = 30_000
DEAD_LETTERS_PAGE = 50


def _worker_rows(workers: list[coordinator_pb2.WorkerInfo]) -> list[dict[str, Any]]:
    now_ms = int(time.time() * 1000)
    rows = []
    for worker in sorted(workers, key=lambda w: w.worker_id):
        silent_ms = now_ms - worker.last_heartbeat_ms
        rows.append({
            "worker_id": worker.worker_id,
            "hostname": worker.hostname,
            "pid": worker.pid,
            "queues": list(worker.queues),
            "task_types": sorted(worker.task_types),
            "in_flight": worker.in_flight,
            "concurrency": worker.concurrency,
            "liveness": "late" if silent_ms > LATE_AFTER_MS else "live",
            "heartbeat_age": duration_text(worker.last_heartbeat_ms, max(now_ms, worker.last_heartbeat_ms)),
            "registered_at": time_text(worker.registered_at_ms),
        })
    return rows


@router.get("/workers")
async def workers(request: Request, session: SessionDep) -> Response:
    answer = await session.person.coordinator("ListWorkers", coordinator_pb2.ListWorkersRequest())
    context = {
        "workers": _worker_rows(list(answer.workers)),
        "refresh_s": REFRESH_S,
        "late_after_s": LATE_AFTER_MS // 1000,
    }
    return render(request, "workers.html", context, session=session)


@router.get("/queues")
async def queues(request: Request, session: SessionDep) -> Response:
    answer = await session.person.coordinator("ListQueues", coordinator_pb2.ListQueuesRequest())
    now_ms = int(time.time() * 1000)
    rows = [
        {
            "queue": q.queue,
            "length": q.length,
            "lag": q.lag,
            "pending": q.pending,
            "oldest_pending_age": (
                duration_text(now_ms - q.oldest_pending_age_ms, now_ms) if q.pending else "-"
            ),
            "workers": q.workers,
        }
        for q in sorted(answer.queues, key=lambda q: q.queue)
    ]
    return render(request, "queues.html", {"queues": rows, "refresh_s": REFRESH_S}, session=session)


async def _dead_letters_page(
    request: Request, session: Session, after: str, *, status_code: int = 200, error: str | None = None
) -> Response:
    """The list, or, when this role may not list dead letters (a client), the page without it and
    with the refusal: its by-id form still lets a person try an action, and learn the rule."""
    listed = True
    try:
        answer = await session.person.coordinator(
            "ListDeadLetters", coordinator_pb2.ListDeadLettersRequest(limit=DEAD_LETTERS_PAGE, after_id=after)
        )
    except ConsoleError as exc:
        answer, listed = coordinator_pb2.ListDeadLettersResponse(), False
        if error is None:  # after a refused action, that refusal is the message to show
            status_code, error = exc.status_code, exc.message
    letters = [
        {
            "id": d.id,
            "run_id": d.run_id,
            "node_id": d.node_id,
            "attempt": d.attempt,
            "queue": d.queue,
            "reason": d.reason,
            "dead_at": time_text(d.dead_at_ms),
        }
        for d in answer.dead_letters
    ]
    # Only an empty page says there are no more (a page is also bounded by bytes): offer the next
    # page whenever this one has letters and was full.
    next_after = letters[-1]["id"] if len(letters) >= DEAD_LETTERS_PAGE else ""
    return render(
        request,
        "dead_letters.html",
        {"letters": letters, "listed": listed, "next_after": next_after},
        session=session,
        status_code=status_code,
        error=error,
    )


@router.get("/dead-letters")
async def dead_letters(
    request: Request,
    session: SessionDep,
    after: Annotated[str, Query(description="id of the last letter of the previous page")] = "",
) -> Response:
    return await _dead_letters_page(request, session, after)


async def _act(request: Request, session: Session, action: str, letter_id: str) -> Response:
    """Replay or delete one dead letter. Success: back to the list with what was done. Refused:
    the list with the coordinator's message and the status it maps to."""
    if action == "replay":
        method = "ReplayDeadLetters"
        message: Any = coordinator_pb2.ReplayDeadLettersRequest(ids=[letter_id])
        done = f"dead letter {letter_id} replayed: it is back on its queue as a new delivery"
    elif action == "delete":
        method = "DeleteDeadLetters"
        message = coordinator_pb2.DeleteDeadLettersRequest(ids=[letter_id])
        done = f"dead letter {letter_id} deleted"
    else:
        raise ConsoleError(404, "NOT_FOUND", f"no action {action!r} on dead letters: replay or delete")
    if not letter_id:
        raise ConsoleError(400, "INVALID_ARGUMENT", "enter the id of a dead letter")
    try:
        answer = await session.person.coordinator(method, message)
    except ConsoleError as exc:
        return await _dead_letters_page(
            request, session, "", status_code=exc.status_code, error=f"{action} refused: {exc.message}"
        )
    # DeleteDeadLetters counts an unknown id (ReplayDeadLetters answers NOT_FOUND itself).
    if action == "delete" and answer.not_found:
        missing = f"no dead letter {letter_id} (already replayed or deleted)"
        return await _dead_letters_page(request, session, "", status_code=404, error=missing)
    response = RedirectResponse("/dead-letters", status_code=303)
    flash(response, request, "ok", done)
    return response


@router.post("/dead-letters/by-id")
async def act_by_id(request: Request) -> Response:
    """The form that names a letter by its id (from an alert, the CLI or a log line)."""
    session, form = await posted_form(request)
    letter_id, action = form.get("id"), form.get("action")
    return await _act(
        request, session, action if isinstance(action, str) else "",
        letter_id.strip() if isinstance(letter_id, str) else "",
    )


@router.post("/dead-letters/{letter_id}/{action}")
async def act(request: Request, letter_id: str, action: str) -> Response:
    """The forms of each row of the list: replay or delete."""
    session, _form = await posted_form(request)
    return await _act(request, session, action, letter_id)
