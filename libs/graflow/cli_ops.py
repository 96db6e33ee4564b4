"""The operators' commands of ``graflow``, answered by the coordinator:

    graflow workers
    graflow dead-letters list [--limit N] [--after ID]
    graflow dead-letters show ID
    graflow dead-letters replay ID... | --all

The coordinator's address comes from ``--coordinator``, ``GRAFLOW_CLIENT_COORDINATOR_ADDRESS`` or
127.0.0.1:50052. Exit codes as in :mod:`graflow.cli` (2 for an unknown dead letter id).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Protocol

from google.protobuf.message import DecodeError

from graflow.cli_format import datetime_text, table
from graflow.errors import GraflowError
from graflow.operators import DeadLetter, DeadLetterNotFoundError, Operators
from graflow_api.v1 import messages_pb2

OK, USAGE = 0, 2
COMMANDS = ("workers", "dead-letters")
_REASON_WIDTH = 80


class Lines(Protocol):
    def line(self, text: str = "") -> None: ...

    def error(self, text: str) -> None: ...


class OpsUsageError(GraflowError):
    """Bad arguments of an operators' command."""


def add_global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--coordinator",
        help="coordinator host:port for workers and dead-letters "
        "(env GRAFLOW_CLIENT_COORDINATOR_ADDRESS, default 127.0.0.1:50052)",
    )


def add_commands(commands: argparse._SubParsersAction) -> None:
    commands.add_parser("workers", help="list live workers (from the coordinator)")
    letters = commands.add_parser("dead-letters", help="list, show and replay dead letters")
    actions = letters.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="dead letters, oldest first")
    listing.add_argument("--limit", type=int, default=20, help="how many (default 20; 0 = all)")
    listing.add_argument("--after", default="", metavar="ID", help="start after this dead letter id")
    show = actions.add_parser("show", help="one dead letter in full, with its decoded envelope")
    show.add_argument("id", metavar="ID")
    replay = actions.add_parser("replay", help="put dead letters back on their queues")
    replay.add_argument("ids", nargs="*", metavar="ID", help="dead letter ids")
    replay.add_argument("--all", action="store_true", help="replay every dead letter")


def run_command(args: argparse.Namespace, out: Lines) -> int:
    """Run ``workers`` or ``dead-letters``; connection errors propagate to the caller."""
    with Operators(args.coordinator, auth_token=args.token, timeout=args.timeout) as ops:
        try:
            if args.command == "workers":
                return _workers(ops, out)
            if args.action == "list":
                return _list(ops, out, args.limit, args.after)
            if args.action == "show":
                return _show(ops, out, args.id)
            return _replay(ops, out, args.ids, args.all)
        except (DeadLetterNotFoundError, OpsUsageError) as exc:
            out.error(str(exc))
            return USAGE


def _workers(ops: Operators, out: Lines) -> int:
    now_ms = int(time.time() * 1000)
    rows = [("WORKER", "HOST", "PID", "QUEUES", "BUSY", "HEARTBEAT", "UP SINCE")]
    for w in sorted(ops.workers(), key=lambda w: w.worker_id):
        rows.append(
            (
                w.worker_id,
                w.hostname,
                str(w.pid),
                ",".join(w.queues),
                f"{w.in_flight}/{w.concurrency}",
                f"{max(0, now_ms - w.last_heartbeat_ms) / 1000:.1f}s ago",
                datetime_text(w.registered_at_ms),
            )
        )
    for row in table(rows):
        out.line(row)
    return OK


def _list(ops: Operators, out: Lines, limit: int, after: str) -> int:
    if limit < 0:
        raise OpsUsageError(f"--limit must be 0 (all) or more, not {limit}")
    rows = [("ID", "QUEUE", "RUN", "NODE", "ATTEMPT", "DEAD AT", "REASON")]
    for letter in ops.dead_letters(limit=limit, after_id=after):
        reason = letter.reason
        if len(reason) > _REASON_WIDTH:
            reason = reason[: _REASON_WIDTH - 3] + "..."
        rows.append(
            (
                letter.id,
                letter.queue or "-",
                letter.run_id or "-",
                letter.node_id or "-",
                str(letter.attempt) if letter.attempt else "-",
                datetime_text(letter.dead_at_ms),
                reason,
            )
        )
    for row in table(rows):
        out.line(row)
    return OK


def _show(ops: Operators, out: Lines, letter_id: str) -> int:
    letter = ops.dead_letter(letter_id)
    out.line(f"id           {letter.id}")
    out.line(f"dead at      {datetime_text(letter.dead_at_ms)}")
    out.line(f"queue        {letter.queue or '(none: not replayable)'}")
    out.line(f"original id  {letter.original_id}")
    out.line(f"reason       {letter.reason}")
    for line in _describe_raw(letter):
        out.line(line)
    return OK


def _describe_raw(letter: DeadLetter) -> list[str]:
    if not letter.raw:
        return ["message      (no bytes)"]
    if not letter.queue:  # not a delivery (e.g. an outcome the scheduler could not apply)
        return [f"message      {len(letter.raw)} bytes"]
    try:
        env = messages_pb2.TaskEnvelope.FromString(letter.raw)
    except DecodeError as exc:
        return [f"message      {len(letter.raw)} bytes, not a TaskEnvelope ({exc})"]
    try:
        args = json.dumps(json.loads(env.args_json or b"{}"), sort_keys=True)
    except ValueError:
        args = f"<{len(env.args_json)} bytes, not JSON>"
    return [
        f"run          {env.run_id}",
        f"node         {env.node_id}",
        f"task type    {env.task_type}",
        f"attempt      {env.attempt} (lost with a worker before: {env.lost_attempts})",
        f"inputs       {', '.join(env.input_node_ids) or '-'}",
        f"timeout      {f'{env.timeout_ms} ms' if env.timeout_ms else 'none'}",
        f"args         {args}",
    ]


def _replay(ops: Operators, out: Lines, ids: list[str], replay_all: bool) -> int:
    if bool(ids) == replay_all:
        raise OpsUsageError(
            "name the dead letters to replay (graflow dead-letters replay ID...) or pass --all"
        )
    replayed = ops.replay_dead_letters(ids, replay_all=replay_all)
    out.line(f"replayed {replayed} dead letter(s)")
    return OK


