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
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import RedirectResponse

from graflow_api.v1 import coordinator_pb2
from graflow_console.auth import Session
from graflow_console.backend import ConsoleError
from graflow_console.web import current_session, flash, posted_form, render

router = APIRouter(include_in_schema=False)

REFRESH_S = 5
# A worker whose last heartbeat is older than this is shown "late": above the coordinator's default
# heartbeat interval (20 s), below its default lease timeout (40 s), after which it is declared dead
# and leaves the list.
LATE_AFTER_MS = 30_000
DEAD_LETTERS_PAGE = 50


def when(ms: int) -> str:
    """An epoch-milliseconds time as UTC text ("" for 0): the same for every viewer and in logs."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ms else ""


def age(ms: int) -> str:
    """A duration in milliseconds as "850 ms", "12.3 s", "4 min 05 s", "3 h 02 min"."""
    ms = max(0, ms)
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    minutes, seconds = divmod(ms // 1000, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


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
            "heartbeat_age": age(silent_ms),
            "registered_at": when(worker.registered_at_ms),
        })
    return rows


@router.get("/workers")
async def workers(request: Request, session: Annotated[Session, Depends(current_session)]) -> Response:
    answer = await session.person.coordinator("ListWorkers", coordinator_pb2.ListWorkersRequest())
    context = {
        "workers": _worker_rows(list(answer.workers)),
        "refresh_s": REFRESH_S,
        "late_after_s": LATE_AFTER_MS // 1000,
    }
    return render(request, "workers.html", context, session=session)


@router.get("/queues")
async def queues(request: Request, session: Annotated[Session, Depends(current_session)]) -> Response:
    answer = await session.person.coordinator("ListQueues", coordinator_pb2.ListQueuesRequest())
    rows = [
        {
            "queue": q.queue,
            "length": q.length,
            "lag": q.lag,
            "pending": q.pending,
            "oldest_pending_age": age(q.oldest_pending_age_ms) if q.pending else "-",
            "workers": q.workers,
        }
        for q in sorted(answer.queues, key=lambda q: q.queue)
    ]
    return render(request, "queues.html", {"queues": rows, "refresh_s": REFRESH_S}, session=session)


async def _dead_letters_page(
    request: Request, session: Session, after: str, *, status_code: int = 200, error: str | None = None
) -> Response:
    answer = await session.person.coordinator(
        "ListDeadLetters", coordinator_pb2.ListDeadLettersRequest(limit=DEAD_LETTERS_PAGE, after_id=after)
    )
    letters = [
        {
            "id": d.id,
            "run_id": d.run_id,
            "node_id": d.node_id,
            "attempt": d.attempt,
            "queue": d.queue,
            "reason": d.reason,
            "dead_at": when(d.dead_at_ms),
        }
        for d in answer.dead_letters
    ]
    # Only an empty page says there are no more (a page is also bounded by bytes): offer the next
    # page whenever this one has letters and was full.
    next_after = letters[-1]["id"] if len(letters) >= DEAD_LETTERS_PAGE else ""
    return render(
        request,
        "dead_letters.html",
        {"letters": letters, "next_after": next_after},
        session=session,
        status_code=status_code,
        error=error,
    )


@router.get("/dead-letters")
async def dead_letters(
    request: Request,
    session: Annotated[Session, Depends(current_session)],
    after: Annotated[str, Query(description="id of the last letter of the previous page")] = "",
) -> Response:
    return await _dead_letters_page(request, session, after)


async def _act(request: Request, method: str, message: Any, done: str, missing: str = "") -> Response:
    """One admin action on a dead letter. Success: back to the list with ``done``. Refused: the list
    with the coordinator's message and status. ``missing``: shown (404) when the answer counts the
    letter as not found (DeleteDeadLetters does; ReplayDeadLetters answers NOT_FOUND itself)."""
    session, _form = await posted_form(request)
    try:
        answer = await session.person.coordinator(method, message)
    except ConsoleError as exc:
        return await _dead_letters_page(
            request, session, "", status_code=exc.status_code, error=f"{method} refused: {exc.message}"
        )
    if missing and answer.not_found:
        return await _dead_letters_page(request, session, "", status_code=404, error=missing)
    response = RedirectResponse("/dead-letters", status_code=303)
    flash(response, request, "ok", done)
    return response


@router.post("/dead-letters/{letter_id}/replay")
async def replay(request: Request, letter_id: str) -> Response:
    return await _act(
        request,
        "ReplayDeadLetters",
        coordinator_pb2.ReplayDeadLettersRequest(ids=[letter_id]),
        f"dead letter {letter_id} replayed: it is back on its queue as a new delivery",
    )


@router.post("/dead-letters/{letter_id}/delete")
async def delete(request: Request, letter_id: str) -> Response:
    return await _act(
        request,
        "DeleteDeadLetters",
        coordinator_pb2.DeleteDeadLettersRequest(ids=[letter_id]),
        f"dead letter {letter_id} deleted",
        missing=f"no dead letter {letter_id} (already replayed or deleted)",
    )
