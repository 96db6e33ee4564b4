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

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from graflow.cli.output import message_data
from graflow.payload import decode
from graflow.run import event_type_name, node_state_name, status_name
from graflow_api.v1 import common_pb2, result_store_pb2, scheduler_pb2

from graflow_console.backend import ConsoleError, Person
from graflow_console.graph_svg import render_svg, run_graph
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
# Node details read the node's events from the run's history: a live run's WatchRun does not end,
# so the read stops once the history has gone quiet this long (or after the cap).
HISTORY_QUIET_S = 0.25
HISTORY_CAP_S = 2.0
PREVIEW_CHARS = 4000


async def graph_svg(person: Person, run: scheduler_pb2.Run) -> str:
    reply = await person.result_store("GetGraph", result_store_pb2.GetGraphRequest(graph_hash=run.graph_hash))
    return render_svg(run_graph(reply.spec, run))


@router.get("/runs/{run_id}")
async def run_page(request: Request, session: SessionDep, run_id: str) -> Response:
    person = session.person
    run = await person.scheduler("GetRun", scheduler_pb2.GetRunRequest(run_id=run_id))
    try:
        svg, graph_error = await graph_svg(person, run), ""
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
    """The graph alone: the page's script reloads it when a node is added at run time."""
    run = await session.person.scheduler("GetRun", scheduler_pb2.GetRunRequest(run_id=run_id))
    return Response(await graph_svg(session.person, run), media_type="image/svg+xml")


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


async def node_events(person: Person, run_id: str, node_id: str) -> list[scheduler_pb2.RunEvent]:
    """The node's events in the run's history (see HISTORY_QUIET_S)."""
    found: list[scheduler_pb2.RunEvent] = []
    events = person.watch_run(run_id).__aiter__()
    deadline = time.monotonic() + HISTORY_CAP_S
    try:
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = await asyncio.wait_for(events.__anext__(), min(HISTORY_QUIET_S, left))
            except (StopAsyncIteration, TimeoutError):
                break
            if event.node_id == node_id:
                found.append(event)
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    return found


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
    events = await node_events(person, run_id, node_id)
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
