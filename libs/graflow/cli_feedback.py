"""``graflow feedback``: the requests tasks wait on, and answering them (answered by the scheduler).

    graflow feedback list [--run RUN] [--limit N]
    graflow feedback show RUN REQUEST
    graflow feedback respond RUN REQUEST (--approve | --reject | --text T | --select OPTION... |
                                          --json VALUE) [--reason R] [--by NAME]

``--select`` once answers a selection; repeated, a multi-selection. Exit codes as in
:mod:`graflow.cli` (2 when the request does not exist or the answer is refused, with the reason).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from graflow.cli_format import datetime_text, table
from graflow.cli_ops import Lines
from graflow.client import Client
from graflow.errors import FeedbackError
from graflow_api.v1 import feedback_pb2

OK, USAGE = 0, 2
COMMAND = "feedback"


def add_command(commands: argparse._SubParsersAction) -> None:
    feedback = commands.add_parser(COMMAND, help="list, show and answer feedback requests")
    actions = feedback.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="requests waiting for an answer, oldest first")
    listing.add_argument("--run", default="", metavar="RUN", help="only this run's requests")
    listing.add_argument("--limit", type=_count, default=100, help="how many (default 100, at most 1000)")
    show = actions.add_parser("show", help="one request with its state and answer")
    show.add_argument("run", metavar="RUN")
    show.add_argument("request", metavar="REQUEST")
    respond = actions.add_parser("respond", help="answer a request: its task runs again with the answer")
    respond.add_argument("run", metavar="RUN")
    respond.add_argument("request", metavar="REQUEST")
    answer = respond.add_mutually_exclusive_group(required=True)
    answer.add_argument("--approve", action="store_true", help="approve (approval requests)")
    answer.add_argument("--reject", action="store_true", help="reject (approval requests)")
    answer.add_argument("--text", help="the text (text requests)")
    answer.add_argument(
        "--select",
        action="append",
        metavar="OPTION",
        help="the option chosen (selection); repeat it for a multi-selection",
    )
    answer.add_argument("--json", metavar="VALUE", help="a JSON value (custom requests)")
    answer.add_argument("--none", action="store_true", help="choose none of the options (multi-selection)")
    respond.add_argument("--reason", default="", help="why (kept with the answer)")
    respond.add_argument("--by", default="", metavar="NAME", help="who answers (kept with the answer)")


def _count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"{value} is not between 1 and 1000")
    return value


def run_command(args: argparse.Namespace, client: Client, out: Lines) -> int:
    try:
        if args.action == "list":
            return _list(client, out, args.run, args.limit)
        if args.action == "show":
            _show(out, client.get_feedback(args.run, args.request))
            return OK
        request = client.get_feedback(args.run, args.request)
        was_answered = request.state == feedback_pb2.FEEDBACK_STATE_ANSWERED
        answered = client.respond_feedback(
            args.run, args.request, **_answer(args, request), reason=args.reason, responded_by=args.by
        )
        if was_answered:
            out.line(f"{args.request} of run {args.run} had this answer already: nothing changes")
        else:
            out.line(f"answered {args.request} of run {args.run}: its task runs again")
        _show(out, answered)
        return OK
    except FeedbackError as exc:
        out.error(str(exc))
        return USAGE


def _answer(args: argparse.Namespace, request: feedback_pb2.FeedbackRequest) -> dict[str, Any]:
    if args.approve or args.reject:
        return {"approved": bool(args.approve)}
    if args.none:
        return {"selected_multiple": []}
    if args.text is not None:
        return {"text": args.text}
    if args.select:
        if request.kind == feedback_pb2.FEEDBACK_KIND_MULTI_SELECTION:
            return {"selected_multiple": args.select}
        if len(args.select) > 1:
            raise FeedbackError(
                f"request {request.request_id} takes one option; --select was given {len(args.select)}"
            )
        return {"selected": args.select[0]}
    try:
        return {"custom_data": json.loads(args.json)}
    except ValueError as exc:
        raise FeedbackError(f"--json is not JSON: {exc}") from None


def _kind(request: feedback_pb2.FeedbackRequest) -> str:
    return feedback_pb2.FeedbackKind.Name(request.kind).removeprefix("FEEDBACK_KIND_").lower()


def _list(client: Client, out: Lines, run_id: str, limit: int) -> int:
    rows = [("RUN", "REQUEST", "KIND", "ASKED", "DEADLINE", "PROMPT")]
    for request in client.list_feedback(run_id, limit):
        rows.append(
            (
                request.run_id,
                request.request_id,
                _kind(request),
                datetime_text(request.created_at_ms),
                datetime_text(request.deadline_ms) or "-",
                request.prompt.splitlines()[0][:60],
            )
        )
    for row in table(rows):
        out.line(row)
    return OK


def _show(out: Lines, request: feedback_pb2.FeedbackRequest) -> None:
    out.line(f"request   {request.request_id}")
    out.line(f"run       {request.run_id}  node {request.node_id} (attempt {request.attempt})")
    out.line(f"state     {feedback_pb2.FeedbackState.Name(request.state).removeprefix('FEEDBACK_STATE_')}")
    out.line(f"kind      {_kind(request)}")
    out.line(f"prompt    {request.prompt}")
    if request.options:
        out.line(f"options   {', '.join(request.options)}")
    if request.metadata_json:
        out.line(f"metadata  {request.metadata_json.decode()}")
    out.line(f"asked     {datetime_text(request.created_at_ms)}")
    if request.deadline_ms:
        action = feedback_pb2.FeedbackTimeoutAction.Name(request.on_timeout).removeprefix(
            "FEEDBACK_TIMEOUT_ACTION_"
        )
        out.line(f"deadline  {datetime_text(request.deadline_ms)} (then {action.lower()})")
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
        out.line(f"answer    {value}{who} at {datetime_text(answer.responded_at_ms)}")
        if answer.reason:
            out.line(f"reason    {answer.reason}")
