"""The pages about runs: the run list, a run (graph, events, node details, live updates), feedback
requests and registered workflows."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse

from graflow_console.auth import Session
from graflow_console.web import current_session, render

router = APIRouter(include_in_schema=False)


@router.get("/")
async def home() -> Response:
    return RedirectResponse("/runs", status_code=303)


@router.get("/runs")
async def runs(request: Request, session: Session = Depends(current_session)) -> Response:
    return render(request, "runs.html", {"runs": []}, session=session)
