"""The JSON HTTP API (``/api/v1``): runs, registered workflows and feedback, for scripts and tools.

Each request carries its caller's credential as ``Authorization: Bearer <token>``, and every gRPC
call made for it carries that same token: the services decide what the caller may do, with the
roles of docs/security.md, exactly as for a gRPC client. There is no cookie, hence no CSRF to guard
against. A request without a token is answered 401 here, before any call: the console has no
credential of its own to fall back on.

Every answer that is not a 2xx has the body ``{"error": {"code", "message"}}`` (:class:`ErrorBody`,
written by the app's ConsoleError handler): ``code`` is the gRPC status name and ``message`` the
service's own words. A body or query the models refuse is INVALID_ARGUMENT (400), like a request
the scheduler refuses, rather than FastAPI's 422, so a client handles one shape. The models
(graflow_console.api_models) make ``/api/openapi.json`` a complete description.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from uuid import uuid4

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from graflow import payload
from graflow.feedback import NOT_GIVEN, build_response
from graflow.run import parse_status
from graflow_api.v1 import common_pb2, result_store_pb2, scheduler_pb2
from graflow_runtime.auth import token_digest

from graflow_console.api_models import (
    AnswerBody,
    CancelBody,
    ErrorBody,
    FeedbackList,
    FeedbackRequest,
    Run,
    RunList,
    SubmitBody,
    Submitted,
    WorkflowList,
    feedback_model,
    run_model,
    workflow_model,
)
from graflow_console.backend import ConsoleError, Person
from graflow_console.pages import bad_input, parse_labels


def _validation_message(exc: RequestValidationError) -> str:
    """``body.arguments: Input should be a valid dictionary; query.limit: ...``: where and what."""
    return "; ".join(
        ".".join(str(part) for part in error.get("loc", ())) + f": {error.get('msg', 'invalid')}"
        for error in exc.errors()
    )


class _ApiRoute(APIRoute):
    """Refused input becomes INVALID_ARGUMENT (400), which the app answers with :class:`ErrorBody`
    like every :class:`ConsoleError` under /api/, instead of FastAPI's 422 of another shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                raise bad_input(_validation_message(exc)) from exc

        return route


_bearer = HTTPBearer(
    auto_error=False,
    description="A Graflow token of a role (docs/security.md); the services check its role for each call.",
)


def _token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    if credentials is None or not credentials.credentials:
        raise ConsoleError(
            401,
            "UNAUTHENTICATED",
            "send your Graflow token as 'Authorization: Bearer <token>' (the console calls the "
            "services with the caller's own credential)",
        )
    return credentials.credentials


def _person(request: Request, token: Annotated[str, Depends(_token)]) -> Person:
    return request.app.state.backend.as_person(token)


Caller = Annotated[Person, Depends(_person)]

router = APIRouter(
    prefix="/api/v1",
    tags=["api"],
    route_class=_ApiRoute,
    responses={
        "default": {
            "model": ErrorBody,
            "description": "Refused or failed: the gRPC code and the service's message.",
        },
        400: {"model": ErrorBody, "description": "INVALID_ARGUMENT: the request or its values are wrong."},
        401: {"model": ErrorBody, "description": "UNAUTHENTICATED: no token, or one the services reject."},
        403: {"model": ErrorBody, "description": "PERMISSION_DENIED: the token's role may not do this."},
        404: {"model": ErrorBody, "description": "NOT_FOUND: no such run, workflow or request."},
        409: {"model": ErrorBody, "description": "FAILED_PRECONDITION or ALREADY_EXISTS: not in this state."},
        503: {"model": ErrorBody, "description": "UNAVAILABLE: a service is unreachable; try again shortly."},
    },
)


def base_url(request: Request) -> str:
    """The console's public base URL (PUBLIC_URL), else the one this request reached."""
    return request.app.state.settings.public_url or str(request.base_url).rstrip("/")


def _status(name: str | None) -> int:
    try:
        return parse_status(name or None)
    except ValueError as exc:
        raise bad_input(str(exc)) from None


@router.get("/runs", response_model=RunList, summary="List runs, newest first")
async def list_runs(
    request: Request,
    person: Caller,
    status: Annotated[str | None, Query(description="RUNNING, SUCCEEDED, FAILED, CANCELED or PAUSED")] = None,
    workflow: Annotated[str, Query(description="Only runs of this workflow name")] = "",
    label: Annotated[list[str], Query(description="key=value; repeat for several (all must match)")] = [],  # noqa: B006 - FastAPI copies defaults
    created_after_ms: Annotated[int, Query(ge=0, description="Unix ms, inclusive; 0 = no bound")] = 0,
    created_before_ms: Annotated[int, Query(ge=0, description="Unix ms, exclusive; 0 = no bound")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    page_token: Annotated[str, Query(description="next_page_token of the previous page")] = "",
) -> RunList:
    answer = await person.scheduler(
        "ListRuns",
        scheduler_pb2.ListRunsRequest(
            limit=limit,
            status=_status(status),
            page_token=page_token,
            workflow_name=workflow,
            labels={k: v for pair in label for k, v in parse_labels(pair).items()},
            created_after_ms=created_after_ms,
            created_before_ms=created_before_ms,
        ),
    )
    base = base_url(request)
    return RunList(
        runs=[run_model(run, f"{base}/runs/{run.run_id}") for run in answer.runs],
        next_page_token=answer.next_page_token,
    )


@router.get("/runs/{run_id}", response_model=Run, summary="One run, its nodes, its results once succeeded")
async def get_run(request: Request, person: Caller, run_id: str) -> Run:
    run = await person.scheduler("GetRun", scheduler_pb2.GetRunRequest(run_id=run_id))
    results = None
    if run.status == common_pb2.RUN_STATUS_SUCCEEDED and run.sink_node_ids:
        answer = await person.result_store(
            "GetResults", result_store_pb2.GetResultsRequest(run_id=run_id, node_ids=run.sink_node_ids)
        )
        results = list(answer.results)
    return run_model(run, f"{base_url(request)}/runs/{run.run_id}", results)


@router.post("/runs/{run_id}/cancel", response_model=Run, summary="Cancel a run (client role)")
async def cancel_run(request: Request, person: Caller, run_id: str, body: CancelBody | None = None) -> Run:
    reason = body.reason if body else ""
    run = await person.scheduler("CancelRun", scheduler_pb2.CancelRunRequest(run_id=run_id, reason=reason))
    return run_model(run, f"{base_url(request)}/runs/{run.run_id}")


@router.get("/workflows", response_model=WorkflowList, summary="The registered workflows, by name")
async def list_workflows(person: Caller) -> WorkflowList:
    answer = await person.scheduler("ListWorkflows", scheduler_pb2.ListWorkflowsRequest())
    return WorkflowList(workflows=[workflow_model(w) for w in answer.workflows])


@router.post(
    "/workflows/{name}/runs",
    response_model=Submitted,
    status_code=201,
    summary="Submit a run of a registered workflow (client role)",
)
async def submit_run(
    request: Request, person: Caller, name: str, body: SubmitBody | None = None
) -> Submitted:
    body = body or SubmitBody()  # no body: every field's default
    answer = await person.scheduler(
        "SubmitRun",
        scheduler_pb2.SubmitRunRequest(
            workflow=name,
            arguments_json=payload.dumps(body.arguments),
            labels=body.labels,
            # Always a key: the channel retries SubmitRun on UNAVAILABLE (grpc_options), and
            # without one a retry after a replica died could create a second run.
            idempotency_key=body.idempotency_key or f"api-{uuid4().hex}",
        ),
    )
    return Submitted(
        run_id=answer.run_id, created=answer.created, url=f"{base_url(request)}/runs/{answer.run_id}"
    )


def _feedback_url(request: Request, run_id: str, request_id: str) -> str:
    return f"{base_url(request)}/runs/{run_id}/feedback/{request_id}"


@router.get("/feedback", response_model=FeedbackList, summary="Feedback requests waiting for an answer")
async def list_feedback(
    request: Request,
    person: Caller,
    run_id: Annotated[str, Query(description="Only this run's requests (empty: every run)")] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> FeedbackList:
    answer = await person.scheduler(
        "ListFeedback", scheduler_pb2.ListFeedbackRequest(run_id=run_id, limit=limit)
    )
    return FeedbackList(
        requests=[feedback_model(r, _feedback_url(request, r.run_id, r.request_id)) for r in answer.requests]
    )


@router.get(
    "/runs/{run_id}/feedback/{request_id}", response_model=FeedbackRequest, summary="One feedback request"
)
async def get_feedback(request: Request, person: Caller, run_id: str, request_id: str) -> FeedbackRequest:
    answer = await person.scheduler(
        "GetFeedback", scheduler_pb2.GetFeedbackRequest(run_id=run_id, request_id=request_id)
    )
    return feedback_model(answer, _feedback_url(request, run_id, request_id))


@router.post(
    "/runs/{run_id}/feedback/{request_id}",
    response_model=FeedbackRequest,
    summary="Answer a feedback request (client role)",
)
async def answer_feedback(
    request: Request, person: Caller, token: Annotated[str, Depends(_token)], run_id: str, request_id: str,
    body: AnswerBody,
) -> FeedbackRequest:
    response = build_response(
        approved=body.approved,
        reason=body.reason,
        text=body.text,
        selected=body.selected,
        selected_multiple=body.selected_multiple,
        # A custom answer may be JSON null: "given" is whether the body named it.
        custom_data=body.custom if "custom" in body.model_fields_set else NOT_GIVEN,
        # As the pages name the person (Session.fingerprint), without the token.
        responded_by=f"HTTP API (token {token_digest(token)[:8]}…)",
    )
    answer = await person.scheduler(
        "RespondFeedback",
        scheduler_pb2.RespondFeedbackRequest(run_id=run_id, request_id=request_id, response=response),
    )
    return feedback_model(answer, _feedback_url(request, run_id, request_id))
