"""The operators' commands of ``graflow``, answered by the coordinator:

    graflow workers [-o json]
    graflow queues [-o json]
    graflow dead-letters list [--limit N] [--after ID] [-o json]
    graflow dead-letters show ID [-o json]
    graflow dead-letters replay ID... | --all
    graflow dead-letters delete ID...
    graflow audit [--limit N] [--before ID] [-o json]

The coordinator's address comes from ``--coordinator``, else ``GRAFLOW_CLIENT_COORDINATOR_ADDRESS``,
else 127.0.0.1:50052. Exit code 2 for an unknown dead letter id.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click
from google.protobuf.message import DecodeError

from graflow.cli.base import OK, App, output_option, pass_app
from graflow.cli.output import datetime_text, message_data
from graflow.errors import UsageError
from graflow.operators import AuditEvent, DeadLetter
from graflow_api.v1 import messages_pb2
from graflow_runtime.limits import AUDIT_PAGE_MAX

_REASON_WIDTH = 80


@click.command()
@output_option
@pass_app
def workers(app: App, output: str) -> int:
    """List live workers (from the coordinator)."""
    with app.operators() as ops:
        found = sorted(ops.workers(), key=lambda w: w.worker_id)
    if output == "json":
        app.out.json([message_data(w) for w in found])
        return OK
    now_ms = int(time.time() * 1000)
    app.out.table(
        ("WORKER", "HOST", "PID", "QUEUES", "BUSY", "HEARTBEAT", "UP SINCE"),
        (
            (
                w.worker_id,
                w.hostname,
                str(w.pid),
                ",".join(w.queues),
                f"{w.in_flight}/{w.concurrency}",
                f"{max(0, now_ms - w.last_heartbeat_ms) / 1000:.1f}s ago",
                datetime_text(w.registered_at_ms),
            )
            for w in found
        ),
    )
    return OK


@click.command()
@output_option
@pass_app
def queues(app: App, output: str) -> int:
    """List the queues with their depth, lag, pending entries and live workers."""
    with app.operators() as ops:
        found = ops.queues()
    if output == "json":
        app.out.json([message_data(q) for q in found])
        return OK
    app.out.table(
        ("QUEUE", "LENGTH", "LAG", "PENDING", "OLDEST PENDING", "WORKERS"),
        (
            (
                q.queue,
                str(q.length),
                str(q.lag),
                str(q.pending),
                f"{q.oldest_pending_age_ms / 1000:.1f}s" if q.pending else "-",
                str(q.workers),
            )
            for q in found
        ),
    )
    return OK


@click.group("dead-letters")
def dead_letters() -> None:
    """List, show, replay and delete dead letters."""


@dead_letters.command("list")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True, help="how many (0 = all)")
@click.option("--after", default="", metavar="ID", help="start after this dead letter id")
@output_option
@pass_app
def list_letters(app: App, limit: int, after: str, output: str) -> int:
    """Dead letters, oldest first."""
    with app.operators() as ops:
        letters = ops.dead_letters(limit=limit, after_id=after)
    if output == "json":
        app.out.json([message_data(letter) for letter in letters])
        return OK
    app.out.table(
        ("ID", "QUEUE", "RUN", "NODE", "ATTEMPT", "DEAD AT", "REASON"),
        (
            (
                letter.id,
                letter.queue or "-",
                letter.run_id or "-",
                letter.node_id or "-",
                str(letter.attempt) if letter.attempt else "-",
                datetime_text(letter.dead_at_ms),
                _shortened(letter.reason),
            )
            for letter in letters
        ),
    )
    return OK


def _shortened(reason: str) -> str:
    return reason if len(reason) <= _REASON_WIDTH else reason[: _REASON_WIDTH - 3] + "..."


@dead_letters.command("show")
@click.argument("letter_id", metavar="ID")
@output_option
@pass_app
def show_letter(app: App, letter_id: str, output: str) -> int:
    """One dead letter in full, with its decoded envelope."""
    with app.operators() as ops:
        letter = ops.dead_letter(letter_id)
    if output == "json":
        app.out.json({**message_data(letter), "envelope": _envelope_data(letter)})
        return OK
    rows = [
        ("id", letter.id),
        ("dead at", datetime_text(letter.dead_at_ms)),
        ("queue", letter.queue or "(none: not replayable)"),
        ("original id", letter.original_id),
        ("reason", letter.reason),
    ]
    app.out.fields([*rows, *_describe_raw(letter)], key_width=13)
    return OK


def _envelope(letter: DeadLetter) -> messages_pb2.TaskEnvelope | None:
    """The delivery a dead letter holds (None for other messages, e.g. an unappliable outcome)."""
    if not letter.raw or not letter.queue:
        return None
    return messages_pb2.TaskEnvelope.FromString(letter.raw)


def _envelope_data(letter: DeadLetter) -> dict[str, Any] | None:
    try:
        env = _envelope(letter)
    except DecodeError:
        return None
    return message_data(env) if env is not None else None


def _describe_raw(letter: DeadLetter) -> list[tuple[str, str]]:
    if not letter.raw:
        return [("message", "(no bytes)")]
    try:
        env = _envelope(letter)
    except DecodeError as exc:
        return [("message", f"{len(letter.raw)} bytes, not a TaskEnvelope ({exc})")]
    if env is None:  # not a delivery (e.g. an outcome the scheduler could not apply)
        return [("message", f"{len(letter.raw)} bytes")]
    try:
        args = json.dumps(json.loads(env.args_json or b"{}"), sort_keys=True)
    except ValueError:
        args = f"<{len(env.args_json)} bytes, not JSON>"
    return [
        ("run", env.run_id),
        ("node", env.node_id),
        ("task type", env.task_type),
        ("attempt", f"{env.attempt} (lost with a worker before: {env.lost_attempts})"),
        ("inputs", ", ".join(env.input_node_ids) or "-"),
        ("timeout", f"{env.timeout_ms} ms" if env.timeout_ms else "none"),
        ("args", args),
    ]


@dead_letters.command("replay")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "replay_all", is_flag=True, help="replay every dead letter")
@pass_app
def replay(app: App, ids: tuple[str, ...], replay_all: bool) -> int:
    """Put dead letters back on their queues."""
    if bool(ids) == replay_all:
        raise UsageError("name the dead letters to replay (graflow dead-letters replay ID...) or pass --all")
    with app.operators() as ops:
        replayed = ops.replay_dead_letters(list(ids), replay_all=replay_all)
    app.out.line(f"replayed {replayed} dead letter(s)")
    return OK


@dead_letters.command("delete")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@pass_app
def delete(app: App, ids: tuple[str, ...]) -> int:
    """Remove dead letters for good (they are not run again)."""
    with app.operators() as ops:
        deleted, not_found = ops.delete_dead_letters(list(ids))
    app.out.line(f"deleted {deleted} dead letter(s)" + (f", {not_found} not found" if not_found else ""))
    return OK


@click.command()
@click.option(
    "--limit", type=click.IntRange(min=1, max=AUDIT_PAGE_MAX), default=20, show_default=True, help="how many"
)
@click.option("--before", default="", metavar="ID", help="only events older than this event id")
@output_option
@pass_app
def audit(app: App, limit: int, before: str, output: str) -> int:
    """The audit log: mutating actions of every service, newest first (who, what, when, from where)."""
    with app.operators() as ops:
        events = ops.audit_events(limit=limit, before_id=before)
    if output == "json":
        app.out.json([_event_data(e) for e in events])
        return OK
    app.out.table(
        ("ID", "AT", "SERVICE", "METHOD", "ROLE", "WHO", "FROM", "OUTCOME", "DETAILS"),
        (
            (
                e.id,
                datetime_text(e.at_ms),
                e.service,
                e.method.rsplit("/", 1)[-1],
                e.role or "-",
                e.principal,
                e.peer,
                e.outcome,
                _shortened(e.details_json),
            )
            for e in events
        ),
    )
    return OK


def _event_data(event: AuditEvent) -> dict[str, Any]:
    data = message_data(event)
    data["details"] = json.loads(data.pop("details_json") or "{}")
    return data


COMMANDS = (workers, queues, dead_letters, audit)
