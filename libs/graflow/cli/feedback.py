"""``graflow feedback``: the requests tasks wait on, and answering them (answered by the scheduler).

    graflow feedback list [--run RUN] [--limit N] [-o json]
    graflow feedback show RUN REQUEST [-o json]
    graflow feedback respond RUN REQUEST (--approve | --reject | --text T | --select OPTION... |
                                          --json VALUE | --none) [--reason R] [--by NAME]

``--select`` once answers a selection; repeated, a multi-selection. Exit code 2 when the request
does not exist or the answer is refused, with the reason.
"""

from __future__ import annotations

from typing import Any

import click

from graflow.cli.base import OK, App, output_option, parse_json, pass_app
from graflow.cli.output import Output, datetime_text, message_data
from graflow.errors import FeedbackError, UsageError
from graflow_api.v1 import feedback_pb2


@click.group()
def feedback() -> None:
    """List, show and answer feedback requests."""


@feedback.command("list")
@click.option("--run", "run_id", default="", metavar="RUN", help="only this run's requests")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True, help="how many")
@output_option
@pass_app
def list_requests(app: App, run_id: str, limit: int, output: str) -> int:
    """Requests waiting for an answer, oldest first."""
    with app.client() as client:
        requests = client.list_feedback(run_id, limit)
    if output == "json":
        app.out.json([message_data(request) for request in requests])
        return OK
    app.out.table(
        ("RUN", "REQUEST", "KIND", "ASKED", "DEADLINE", "PROMPT"),
        (
            (
                request.run_id,
                request.request_id,
                _kind(request),
                datetime_text(request.created_at_ms),
                datetime_text(request.deadline_ms) or "-",
                request.prompt.splitlines()[0][:60] if request.prompt else "",
            )
            for request in requests
        ),
    )
    return OK


@feedback.command()
@click.argument("run_id", metavar="RUN")
@click.argument("request_id", metavar="REQUEST")
@output_option
@pass_app
def show(app: App, run_id: str, request_id: str, output: str) -> int:
    """One request with its state and answer."""
    with app.client() as client:
        request = client.get_feedback(run_id, request_id)
    if output == "json":
        app.out.json(message_data(request))
    else:
        _show(app.out, request)
    return OK


@feedback.command()
@click.argument("run_id", metavar="RUN")
@click.argument("request_id", metavar="REQUEST")
@click.option("--approve", is_flag=True, help="approve (approval requests)")
@click.option("--reject", is_flag=True, help="reject (approval requests)")
@click.option("--text", help="the text (text requests)")
@click.option(
    "--select",
    multiple=True,
    metavar="OPTION",
    help="the option chosen (selection); repeat it for a multi-selection",
)
@click.option("--json", "json_text", metavar="VALUE", help="a JSON value (custom requests)")
@click.option("--none", "choose_none", is_flag=True, help="choose none of the options (multi-selection)")
@click.option("--reason", default="", help="why (kept with the answer)")
@click.option("--by", default="", metavar="NAME", help="who answers (kept with the answer)")
@pass_app
def respond(
    app: App,
    run_id: str,
    request_id: str,
    reason: str,
    by: str,
    **answer: Any,
) -> int:
    """Answer a request: its task runs again with the answer."""
    given = [name for name, value in answer.items() if value not in (False, None, ())]
    if len(given) != 1:
        raise UsageError("give one answer: --approve, --reject, --text, --select, --json or --none")
    with app.client() as client:
        request = client.get_feedback(run_id, request_id)
        was_answered = request.state == feedback_pb2.FEEDBACK_STATE_ANSWERED
        answered = client.respond_feedback(
            run_id, request_id, **_answer(answer, request), reason=reason, responded_by=by
        )
    if was_answered:
        app.out.line(f"{request_id} of run {run_id} had this answer already: nothing changes")
    else:
        app.out.line(f"answered {request_id} of run {run_id}: its task runs again")
    _show(app.out, answered)
    return OK


def _answer(answer: dict[str, Any], request: feedback_pb2.FeedbackRequest) -> dict[str, Any]:
    if answer["approve"] or answer["reject"]:
        return {"approved": bool(answer["approve"])}
    if answer["choose_none"]:
        return {"selected_multiple": []}
    if answer["text"] is not None:
        return {"text": answer["text"]}
    selected = list(answer["select"])
    if selected:
        if request.kind == feedback_pb2.FEEDBACK_KIND_MULTI_SELECTION:
            return {"selected_multiple": selected}
        if len(selected) > 1:
            raise FeedbackError(
                f"request {request.request_id} takes one option; --select was given {len(selected)}"
            )
        return {"selected": selected[0]}
    return {"custom_data": parse_json(answer["json_text"], "--json")}


def _kind(request: feedback_pb2.FeedbackRequest) -> str:
    return feedback_pb2.FeedbackKind.Name(request.kind).removeprefix("FEEDBACK_KIND_").lower()


def _show(out: Output, request: feedback_pb2.FeedbackRequest) -> None:
    rows = [
        ("request", request.request_id),
        ("run", f"{request.run_id}  node {request.node_id} (attempt {request.attempt})"),
        ("state", feedback_pb2.FeedbackState.Name(request.state).removeprefix("FEEDBACK_STATE_")),
        ("kind", _kind(request)),
        ("prompt", request.prompt),
    ]
    if request.options:
        rows.append(("options", ", ".join(request.options)))
    if request.metadata_json:
        rows.append(("metadata", request.metadata_json.decode()))
    rows.append(("asked", datetime_text(request.created_at_ms)))
    if request.deadline_ms:
        action = feedback_pb2.FeedbackTimeoutAction.Name(request.on_timeout).removeprefix(
            "FEEDBACK_TIMEOUT_ACTION_"
        )
        rows.append(("deadline", f"{datetime_text(request.deadline_ms)} (then {action.lower()})"))
    if request.HasField("response"):
        answer = request.response
        value = {
            feedback_pb2.FEEDBACK_KIND_APPROVAL: "approved" if answer.approved else "rejected",
            feedback_pb2.FEEDBACK_KIND_TEXT: answer.text,
            feedback_pb2.FEEDBACK_KIND_SELECTION: answer.selected,
            feedback_pb2.FEEDBACK_KIND_MULTI_SELECTION: ", ".join(answer.selected_multiple),
            feedback_pb2.FEEDBACK_KIND_CUSTOM: answer.custom_json.decode(),
        }.get(request.kind, "")
        who = f" by {answer.responded_by}" if answer.responded_by else ""
        rows.append(("answer", f"{value}{who} at {datetime_text(answer.responded_at_ms)}"))
        if answer.reason:
            rows.append(("reason", answer.reason))
    out.fields(rows, key_width=10)
