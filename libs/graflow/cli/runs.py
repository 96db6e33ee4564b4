"""The runs' commands of ``graflow``, answered by the scheduler (and the result-store for results):

    graflow submit MODULE:WORKFLOW [--arg NODE.PARAM=VALUE]... [--args-json JSON] [--wait]
                                   [--idempotency-key K] [--label k=v]... [-o json]
    graflow status RUN [--graph [ascii|mermaid]] [-o json]
    graflow watch RUN [--cursor C] [--events] [-o json]
    graflow runs [--limit N] [--status S] [-o json]
    graflow cancel RUN [--reason R]

Exit codes (:mod:`graflow.cli.base`): 1 when the run failed or was canceled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

import click

from graflow.cli.base import OK, RUN_FAILED, App, output_option, pass_app
from graflow.cli.graph import mermaid, run_graph, tree
from graflow.cli.output import Output, datetime_text, format_value, json_value, message_data
from graflow.cli.progress import RunProgress, show_progress
from graflow.cli.workflows import load_workflow, parse_node_args, with_node_args
from graflow.client import Client
from graflow.errors import RunCanceledError, RunFailedError, UsageError
from graflow.run import ENDED_STATUSES, Run, RunEvent, RunInfo, event_type_name, node_state_name, status_name
from graflow_api.v1 import common_pb2

# Run statuses `graflow runs --status` takes.
_STATUS_NAMES = "running, succeeded, failed, canceled, paused"
# How a task type that no worker of its queue registers fails (the worker's error type).
_UNKNOWN_TASK_TYPE = "UnknownTaskType"


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%H:%M:%S.%f")[:-3] if ms else "--:--:--.---"


def format_event(event: RunEvent) -> str:
    """One line: time, node, event, attempt, then the error and message if any."""
    attempt = f"attempt {event.attempt}" if event.attempt else ""
    parts = [
        _time(event.at_ms),
        f"{event.node_id or '(run)':<20}",
        f"{event_type_name(event.type):<15}",
        f"{attempt:<10}",
    ]
    if event.error.type or event.error.message:
        parts.append(f"{event.error.type}: {event.error.message}")
    if event.message:
        parts.append(event.message)
    return "  ".join(parts).rstrip()


def _exit_code(info: RunInfo) -> int:
    return RUN_FAILED if info.status in ENDED_STATUSES - {common_pb2.RUN_STATUS_SUCCEEDED} else OK


def _unknown_task_hint(error_type: str, out: Output) -> None:
    if error_type == _UNKNOWN_TASK_TYPE:
        out.warning(
            "hint: start a worker that has the task, on the node's queue: "
            "graflow worker -A YOUR_TASK_MODULE -Q QUEUE (or graflow dev --tasks YOUR_TASK_MODULE)"
        )


def report_outcome(run: Run, out: Output, as_json: bool = False) -> int:
    """The run's result (or its error) once it has ended; the exit code."""
    document: dict[str, Any] = {"run_id": run.id}
    code = OK
    try:
        value = run.result()
        document.update(status="SUCCEEDED", result=json_value(value))
    except RunFailedError as exc:
        failed = getattr(exc, "failed", [])
        document.update(status="FAILED", error=asdict(exc.error), failed=[asdict(m) for m in failed])
        code = RUN_FAILED
        if not as_json:
            out.line(f"run {run.id} FAILED at {exc.error}", style="red")
            if exc.error.traceback:
                out.line(exc.error.traceback.rstrip())
            for member in failed:
                out.line(f"  failed member {member}")
            _unknown_task_hint(exc.error.type, out)
    except RunCanceledError as exc:
        document.update(status="CANCELED", message=str(exc))
        code = RUN_FAILED
        if not as_json:
            out.line(str(exc), style="magenta")
    else:
        if not as_json:
            out.line(f"run {run.id} SUCCEEDED, result:", style="green")
            out.line(format_value(value))
    if as_json:
        out.json(document)
    return code


def follow(run: Run, out: Output, cursor: str | None = None) -> int:
    """Print the run's events until it ends, then its result or its error."""
    for event in run.watch(cursor):
        out.line(format_event(event))
    return report_outcome(run, out)


def labels_of(pairs: Sequence[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"label {pair!r} is not KEY=VALUE")
        labels[key] = value
    return labels


@click.command()
@click.argument("target", metavar="MODULE:WORKFLOW")
@click.option(
    "--arg",
    "node_args",
    multiple=True,
    metavar="NODE.PARAM=VALUE",
    help="an argument of a node (VALUE is JSON, else a string; repeatable)",
)
@click.option("--args-json", metavar="JSON", help='arguments of nodes: {"node": {"param": value}}')
@click.option("--wait", is_flag=True, help="watch the run and print its result")
@click.option("--idempotency-key", help="repeat-safe submit: the same key gives the same run")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="label (repeatable)")
@output_option
@pass_app
def submit(
    app: App,
    target: str,
    node_args: tuple[str, ...],
    args_json: str | None,
    wait: bool,
    idempotency_key: str | None,
    labels: tuple[str, ...],
    output: str,
) -> int:
    """Submit MODULE:WORKFLOW (a Workflow, or a function returning one); print the run id."""
    spec = with_node_args(load_workflow(target), parse_node_args(node_args, args_json))
    with app.client() as client:
        run = client.submit(spec, idempotency_key=idempotency_key, labels=labels_of(labels))
        if run.created is False:
            app.out.warning(f"idempotency key {idempotency_key!r} matched existing run {run.id}")
        if output == "json":
            if not wait:
                app.out.json({"run_id": run.id, "created": run.created})
                return OK
            for _ in run.watch():
                pass
            return report_outcome(run, app.out, as_json=True)
        app.out.line(run.id)
        return follow(run, app.out) if wait else OK


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option(
    "--graph",
    type=click.Choice(["auto", "ascii", "mermaid"]),
    is_flag=False,
    flag_value="auto",
    default=None,
    help="draw the run's graph with node states: ascii (a tree) or mermaid (flowchart text); "
    "--graph alone: ascii on a terminal, mermaid when piped",
)
@output_option
@pass_app
def status(app: App, run_id: str, graph: str | None, output: str) -> int:
    """A run's status, nodes and error (exit code 1 if it failed or was canceled)."""
    out = app.out
    with app.client() as client:
        info = client.get_run(run_id)
        if output == "json":
            out.json(message_data(info))
        elif graph:
            _show_graph(client, info, graph, out)
        else:
            _show_status(info, out)
    return _exit_code(info)


def _show_graph(client: Client, info: RunInfo, style: str, out: Output) -> None:
    drawn = run_graph(info, client.get_graph(info.graph_hash))
    if style == "mermaid" or (style == "auto" and not out.is_terminal):
        for line in mermaid(drawn).splitlines():
            out.line(line)
    else:
        out.render(tree(drawn, f"run {info.run_id} ({info.workflow_name}) {status_name(info.status)}"))


def _show_status(info: RunInfo, out: Output) -> None:
    rows = [
        ("run", info.run_id),
        ("workflow", info.workflow_name),
        ("status", status_name(info.status)),
        ("created", datetime_text(info.created_at_ms)),
    ]
    if info.ended_at_ms:
        rows.append(("ended", datetime_text(info.ended_at_ms)))
    if info.labels:
        rows.append(("labels", ", ".join(f"{k}={v}" for k, v in sorted(info.labels.items()))))
    if info.message:
        rows.append(("message", info.message))
    if info.parent.run_id:
        rows.append(("parent", f"{info.parent.run_id} (node {info.parent.node_id})"))
    if info.child_run_ids:
        rows.append(("children", ", ".join(info.child_run_ids)))
    if info.skipped_deliveries:
        rows.append(("skipped", f"{info.skipped_deliveries} deliveries read after the end, not started"))
    if info.canceled_attempts:
        rows.append(("stopped", f"{info.canceled_attempts} running attempts stopped on the run's end"))
    out.fields(rows, key_width=10)
    out.line()
    out.table(
        ("NODE", "KIND", "STATE", "ATTEMPT", "ERROR"),
        (
            (
                node.node_id,
                node.kind,
                node_state_name(node.state),
                str(node.attempt),
                f"{node.error.type}: {node.error.message}" if node.error.type else "",
            )
            for node in info.nodes
        ),
        state_column=2,
    )
    waiting = [node for node in info.nodes if node.state == common_pb2.NODE_STATE_WAITING]
    if waiting:
        out.line()
    for node in waiting:
        child = node.waiting_for.removeprefix("child:")
        if child != node.waiting_for:
            out.fields([("waiting", f"{node.node_id} for child run {child}: graflow status {child}")], 10)
        else:
            out.fields(
                [
                    (
                        "waiting",
                        f"{node.node_id} for feedback {node.waiting_for}: "
                        f"graflow feedback show {info.run_id} {node.waiting_for}",
                    )
                ],
                10,
            )
    if info.status == common_pb2.RUN_STATUS_FAILED:
        out.line()
        out.fields([("error", f"{info.failed_node_id}: {info.error.type}: {info.error.message}")], 10)
        if info.error.traceback:
            out.line(info.error.traceback.rstrip())
        _unknown_task_hint(info.error.type, out)


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option("--cursor", help="resume after this event cursor")
@click.option("--events", is_flag=True, help="print the event log (what is printed when not on a terminal)")
@output_option
@pass_app
def watch(app: App, run_id: str, cursor: str | None, events: bool, output: str) -> int:
    """Follow a run until it ends: live progress on a terminal, else its events; then its result."""
    out = app.out
    with app.client() as client:
        run = client.run(run_id)
        if output == "json":
            for event in run.watch(cursor):
                out.json_line(message_data(event))
            return _exit_code(client.get_run(run_id))
        if events or not out.is_terminal:
            return follow(run, out, cursor)
        progress = RunProgress(node.node_id for node in client.get_run(run_id).nodes)
        show_progress(run_id, run.watch(cursor), progress, out.console)
        out.line(f"run {run_id}: {progress.summary()}")
        return report_outcome(run, out)


@click.command()
@click.option("--limit", type=int, default=20, show_default=True, help="how many")
@click.option(
    "--status", "status_filter", metavar="STATUS", help=f"only runs with this status ({_STATUS_NAMES})"
)
@output_option
@pass_app
def runs(app: App, limit: int, status_filter: str | None, output: str) -> int:
    """List runs, newest first."""
    with app.client() as client:
        try:
            found = client.list_runs(limit=limit, status=status_filter)
        except ValueError as exc:  # an unknown --status name
            raise UsageError(str(exc)) from exc
    if output == "json":
        app.out.json([message_data(info) for info in found])
        return OK
    app.out.table(
        ("RUN", "WORKFLOW", "STATUS", "CREATED", "ENDED"),
        (
            (
                info.run_id,
                info.workflow_name,
                status_name(info.status),
                datetime_text(info.created_at_ms),
                datetime_text(info.ended_at_ms),
            )
            for info in found
        ),
        state_column=2,
    )
    return OK


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option("--reason", default="canceled from the graflow CLI", show_default=True)
@pass_app
def cancel(app: App, run_id: str, reason: str) -> int:
    """Cancel a run (its running tasks see the cancel; nothing more starts)."""
    with app.client() as client:
        info = client.cancel(run_id, reason)
    app.out.line(f"run {info.run_id}: {status_name(info.status)}")
    return OK


COMMANDS = (submit, status, watch, runs, cancel)
