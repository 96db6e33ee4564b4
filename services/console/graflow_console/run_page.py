"""A run's page: its graph with node states kept live, node details, events, family, feedback
requests and the cancel action.

Live updates are server-sent events (``/runs/{id}/events``) fed by the scheduler's WatchRun as the
signed-in person: the history from the start, then live events until the run ends. Each SSE event
carries the WatchRun cursor as its id, so the browser's automatic reconnect (Last-Event-ID)
resumes where it stopped; an ``end`` event tells the page's script (static/run.js) that nothing
more will come. SSE rather than a WebSocket: one direction is all it needs, it goes through
proxies as plain HTTP, and the browser reconnects by itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from graflow.cli.output import message_data
from graflow.payload import decode
from graflow.run import event_type_name, node_state_name, status_name
from graflow_api.v1 import common_pb2, result_store_pb2, scheduler_pb2

from graflow_console.backend import ConsoleError, Person
from graflow_console.graph_svg import render_graph, run_graph
from graflow_console.web import SessionDep, flash, posted_form, render

router = APIRouter(include_in_schema=False)

ENDED = ("SUCCEEDED", "FAILED", "CANCELED")
# The node state each event type leaves its node in (the page's script applies it).
EVENT_STATES = {
    "NODE_READY": "READY",
    "NODE_SUCCEEDED": "SUCCEEDED",
    "NODE_FAILED": "FAILED",
    "NODE_RETRYING": "READY",
    "NODE_SKIPPED": "SKIPPED",
    "NODE_WAITING": "WAITING",
    "NODE_ADDED": "PENDING",
}
RUN_STATES = {"RUN_SUCCEEDED": "SUCCEEDED", "RUN_FAILED": "FAILED", "RUN_CANCELED": "CANCELED",
              "RUN_PAUSED": "PAUSED", "RUN_RESUMED": "RUNNING", "RUN_CREATED": "RUNNING"}
# The page's events list and node details read the run's history through WatchRun (see
# read_history): an ended run's to its end, a live run's until it has caught up with the run's last
# update and then gone quiet this long; HISTORY_CAP_S bounds the read either way.
HISTORY_QUIET_S = 0.25
HISTORY_CAP_S = 10.0
PREVIEW_CHARS = 4000


async def graph_markup(person: Person, run: scheduler_pb2.Run) -> str:
    """The run's graph: an SVG drawing, or a node table when it is too large to draw in time
    (graph_svg.render_graph, which keeps the layout off the event loop)."""
    reply = await person.result_store("GetGraph", result_store_pb2.GetGraphRequest(graph_hash=run.graph_hash))
    return await render_graph(run_graph(reply.spec, run))


@dataclass
class History:
    events: list[scheduler_pb2.RunEvent]
    cursor: str  # the last event's ("" without any): the live stream resumes after it


async def read_history(person: Person, run: scheduler_pb2.Run) -> History:
    """The events of ``run`` so far. An ended run's WatchRun ends after its last event: read to
    there. A live run's does not end: read until an event at or after the run's last update
    (``updated_at_ms``: the scheduler writes each update with an event of the same time, in one
    script, so this compares one clock reading with itself), and only then stop once the stream
    has gone quiet for HISTORY_QUIET_S. A quiet timer from the start stopped before the first
    event on a loaded machine (no worker, no timings in node details). HISTORY_CAP_S bounds it."""
    ended = status_name(run.status) in ENDED
    found: list[scheduler_pb2.RunEvent] = []
    caught_up = False
    events = person.watch_run(run.run_id).__aiter__()
    deadline = time.monotonic() + HISTORY_CAP_S
    try:
        while (left := deadline - time.monotonic()) > 0:
            wait = min(HISTORY_QUIET_S, left) if caught_up and not ended else left
            try:
                event = await asyncio.wait_for(events.__anext__(), wait)
            except (StopAsyncIteration, TimeoutError):
                break
            found.append(event)
            caught_up = caught_up or event.at_ms >= run.updated_at_ms
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    return History(found, found[-1].cursor if found else "")


def event_line(event: scheduler_pb2.RunEvent) -> dict[str, str]:
    """One item of ``#events``: the text static/run.js's appendEvent writes for a live event."""
    kind = event_type_name(event.type)
    at = ""
    if event.at_ms:
        at = datetime.fromtimestamp(event.at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:23]
    parts = [at, event.node_id or "(run)", kind]
    if event.attempt:
        parts.append(f"attempt {event.attempt}")
    if event.worker_id:
        parts.append(event.worker_id)
    if event.error.type or event.error.message:
        parts.append(f"{event.error.type}: {event.error.message}")
    if event.message:
        parts.append(event.message)
    return {"type": kind, "text": " · ".join(parts)}


@router.get("/runs/{run_id}")
async def run_page(request: Request, session: SessionDep, run_id: str) -> Response:
    person = session.person
    run = await person.scheduler("GetRun", scheduler_pb2.GetRunRequest(run_id=run_id))
    try:
        history, events_error = await read_history(person, run), ""
    except ConsoleError as exc:
        history, events_error = History([], ""), exc.message
    if status_name(run.status) not in ENDED:
        # The graph and status as of after the history's last event: the page's live stream
        # starts after it, so nothing between the two is missed.
        run = await person.scheduler("GetRun", scheduler_pb2.GetRunRequest(run_id=run_id))
    try:
        svg, graph_error = await graph_markup(person, run), ""
    except ConsoleError as exc:
        svg, graph_error = "", exc.message
    try:
        listed = await person.scheduler("ListFeedback", scheduler_pb2.ListFeedbackRequest(run_id=run_id))
        waiting = listed.requests
        feedback_error = ""
    except ConsoleError as exc:
        waiting, feedback_error = [], exc.message
    return render(request, "run.html", {
        "run": run,
        "status": status_name(run.status),
        "ended": status_name(run.status) in ENDED,
        "svg": svg,
        "graph_error": graph_error,
        "waiting": list(waiting),
        "feedback_error": feedback_error,
        "events": [event_line(event) for event in history.events],
        "events_error": events_error,
        "cursor": history.cursor,
        **await _run_results(person, run),
    }, session=session)


async def _run_results(person: Person, run: scheduler_pb2.Run) -> dict[str, object]:
    """A SUCCEEDED run's result, as the API's GET run gives it: its sinks' results (previews)."""
    if run.status != common_pb2.RUN_STATUS_SUCCEEDED or not run.sink_node_ids:
        return {"results": [], "results_note": ""}
    try:
        reply = await person.result_store("GetResults", result_store_pb2.GetResultsRequest(
            run_id=run.run_id, node_ids=run.sink_node_ids))
    except ConsoleError as exc:
        return {"results": [], "results_note": exc.message}
    results = []
    for stored in reply.results:
        decoded = decode(stored.value)
        if isinstance(decoded, bytes):
            shown = f"{len(decoded)} bytes of {stored.value.content_type}"
        else:
            shown = preview(decoded)
        results.append((stored.node_id, shown))
    return {"results": results, "results_note": ""}


@router.get("/runs/{run_id}/graph")
async def run_graph_fragment(session: SessionDep, run_id: str) -> Response:
    """The graph alone (SVG, or the node table as HTML): the page's script reloads it when a node
    is added at run time and when the run ends."""
    run = await session.person.scheduler("GetRun", scheduler_pb2.GetRunRequest(run_id=run_id))
    markup = await graph_markup(session.person, run)
    return Response(markup, media_type="image/svg+xml" if markup.startswith("<svg") else "text/html")


def sse_data(event: scheduler_pb2.RunEvent) -> dict[str, object]:
    data = message_data(event)
    kind = event_type_name(event.type)
    data["type"] = kind
    data["node_state"] = EVENT_STATES.get(kind, "")
    data["run_status"] = RUN_STATES.get(kind, "")
    return data


@router.get("/runs/{run_id}/events")
async def run_events(request: Request, session: SessionDep, run_id: str, cursor: str = "") -> Response:
    resume = request.headers.get("last-event-id") or cursor

    async def stream() -> AsyncIterator[str]:
        try:
            async for event in session.person.watch_run(run_id, resume):
                yield f"id: {event.cursor}\nevent: run-event\ndata: {json.dumps(sse_data(event))}\n\n"
        except ConsoleError as exc:
            yield f"event: failure\ndata: {json.dumps({'code': exc.grpc_code, 'message': exc.message})}\n\n"
        yield "event: end\ndata: {}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"cache-control": "no-store", "x-accel-buffering": "no"})


def preview(payload: object) -> str:
    text = payload if isinstance(payload, str) else json.dumps(payload, indent=2, sort_keys=True,
                                                              ensure_ascii=False, default=repr)
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + f"\n… ({len(text)} characters)"


async def _result(person: Person, run_id: str, node_id: str) -> tuple[str, str]:
    """(preview of the node's result, or why there is none)."""
    try:
        reply = await person.result_store("GetResults", result_store_pb2.GetResultsRequest(
            run_id=run_id, node_ids=[node_id]))
    except ConsoleError as exc:
        return "", exc.message
    if not reply.results:
        return "", "no result stored"
    value = reply.results[0].value
    decoded = decode(value)
    if isinstance(decoded, bytes):
        return "", f"{len(decoded)} bytes of {value.content_type}"
    return preview(decoded), ""


async def _channels(person: Person, run_id: str) -> tuple[list[tuple[str, str]], str]:
    try:
        listed = await person.result_store("ChannelKeys", result_store_pb2.ChannelKeysRequest(run_id=run_id))
        keys = listed.keys
        if not keys:
            return [], ""
        reply = await person.result_store("ChannelGet", result_store_pb2.ChannelGetRequest(
            run_id=run_id, keys=sorted(keys)))
    except ConsoleError as exc:
        return [], exc.message
    values = []
    for entry in reply.entries:
        decoded = decode(entry.value)
        shown = f"{len(decoded)} bytes" if isinstance(decoded, bytes) else preview(decoded)
        values.append((entry.key, shown))
    return values, ""


@router.get("/runs/{run_id}/nodes/{node_id}")
async def node_details(request: Request, session: SessionDep, run_id: str, node_id: str) -> Response:
    """``#node-details`` of one node (an htmx fragment)."""
    person = session.person
    run = await person.scheduler("GetRun", scheduler_pb2.GetRunRequest(run_id=run_id))
    node = next((n for n in run.nodes if n.node_id == node_id), None)
    if node is None:
        raise ConsoleError(404, "NOT_FOUND", f"run {run_id} has no node {node_id!r}")
    events = [e for e in (await read_history(person, run)).events if e.node_id == node_id]
    result, result_note = await _result(person, run_id, node_id)
    channels, channels_note = await _channels(person, run_id)
    workers = sorted({e.worker_id for e in events if e.worker_id})
    return render(request, "node_details.html", {
        "run": run, "node": node, "state": node_state_name(node.state), "events": events,
        "event_type_name": event_type_name, "workers": workers,
        "first_ms": events[0].at_ms if events else 0, "last_ms": events[-1].at_ms if events else 0,
        "result": result, "result_note": result_note, "channels": channels, "channels_note": channels_note,
    }, session=session)


@router.post("/runs/{run_id}/cancel")
async def cancel(request: Request, run_id: str) -> Response:
    session, form = await posted_form(request)
    reason = str(form.get("reason") or "canceled from the console")
    run = await session.person.scheduler(
        "CancelRun", scheduler_pb2.CancelRunRequest(run_id=run_id, reason=reason))
    response = RedirectResponse(f"/runs/{run_id}", status_code=303)
    flash(response, request, "ok", f"run {run_id} is {status_name(run.status)}")
    return response
