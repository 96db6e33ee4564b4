"""The ``graflow`` command: a local stack, and submitting, watching and inspecting runs.

    graflow dev [--workers N] [--keep] [--example etl] [--tasks MODULE]...
    graflow worker -A MODULE [-A MODULE] [-Q QUEUE,...] [-c N] [--redis URL] [--worker-id ID]
    graflow submit MODULE:WORKFLOW [--wait] [--idempotency-key K] [--label k=v]
    graflow status RUN | graflow watch RUN | graflow runs [--limit N] [--status S] | graflow cancel RUN
    graflow feedback list|show|respond   (requests of tasks waiting for a person: graflow.cli_feedback)
    graflow workers | graflow dead-letters list|show|replay   (operators' commands: graflow.cli_ops)

Exit codes: 0 ok, 1 the run failed or was canceled, 2 usage or connection errors, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NoReturn, TextIO

from graflow import cli_feedback, cli_ops
from graflow.cli_format import datetime_text, table
from graflow.client import Client, ServiceCallError, ServiceUnavailableError
from graflow.devstack import LocalStack, LocalStackError, child_pythonpath
from graflow.dsl import Workflow
from graflow.errors import (
    GraflowError,
    RunCanceledError,
    RunFailedError,
    RunNotFoundError,
    WorkflowDefinitionError,
)
from graflow.run import ENDED_STATUSES, Run, RunEvent, RunInfo, event_type_name, node_state_name, status_name
from graflow_api.v1 import common_pb2, workflow_pb2
from graflow_runtime.settings import (
    DEFAULT_COORDINATOR_ADDRESS,
    DEFAULT_RESULT_STORE_ADDRESS,
    DEFAULT_SCHEDULER_ADDRESS,
)
from graflow_runtime.version import __version__

OK, RUN_FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130
DEFAULT_ADDRESSES = {
    "scheduler": DEFAULT_SCHEDULER_ADDRESS,
    "coordinator": DEFAULT_COORDINATOR_ADDRESS,
    "result-store": DEFAULT_RESULT_STORE_ADDRESS,
}


class UsageError(GraflowError):
    """Bad command-line input; the message says what to type instead."""


class Output:
    """Everything the CLI shows: results on stdout, problems on stderr."""

    def __init__(self, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self._out = stdout or sys.stdout
        self._err = stderr or sys.stderr

    def line(self, text: str = "") -> None:
        self._out.write(text + "\n")
        self._out.flush()

    def error(self, text: str) -> None:
        self._err.write(f"graflow: error: {text}\n")
        self._err.flush()


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


def format_value(value: Any) -> str:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def follow(run: Run, out: Output, cursor: str | None = None) -> int:
    """Print the run's events until it ends, then its result or its error."""
    for event in run.watch(cursor):
        out.line(format_event(event))
    return report_outcome(run, out)


def report_outcome(run: Run, out: Output) -> int:
    try:
        value = run.result()
    except RunFailedError as exc:
        out.line(f"run {run.id} FAILED at {exc.error}")
        if exc.error.traceback:
            out.line(exc.error.traceback.rstrip())
        for member in getattr(exc, "failed", []):
            out.line(f"  failed member {member}")
        return RUN_FAILED
    except RunCanceledError as exc:
        out.line(str(exc))
        return RUN_FAILED
    out.line(f"run {run.id} SUCCEEDED, result:")
    out.line(format_value(value))
    return OK


def load_workflow(target: str) -> Workflow | workflow_pb2.WorkflowSpec:
    """``module:attr`` naming a Workflow, a WorkflowSpec or a zero-argument function returning one."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise UsageError(f"{target!r} is not MODULE:WORKFLOW (e.g. graflow_examples.etl:etl)")
    _import_from_cwd()
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if callable(obj) and not isinstance(obj, Workflow):
        obj = obj()
    if not isinstance(obj, (Workflow, workflow_pb2.WorkflowSpec)):
        raise UsageError(
            f"{target} is a {type(obj).__name__}, not a graflow Workflow (or a function returning one)"
        )
    return obj


def _import_from_cwd() -> None:
    """Modules of the current directory are importable, as with ``python -m`` (and celery -A)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _require_modules(names: Sequence[str], option: str) -> None:
    """Each named module can be found from here, or a usage error naming it."""
    _import_from_cwd()
    for name in names:
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError) as exc:
            raise UsageError(f"{option} {name}: cannot find module {name!r}: {exc}") from exc
        if found is None:
            raise UsageError(
                f"{option} {name}: no module {name!r} in {os.getcwd()} or on the Python path "
                "(run from the directory that holds it)"
            )


def _labels(pairs: Sequence[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"label {pair!r} is not KEY=VALUE")
        labels[key] = value
    return labels


# ---- commands ----
def cmd_submit(args: argparse.Namespace, client: Client, out: Output) -> int:
    run = client.submit(
        load_workflow(args.target), idempotency_key=args.idempotency_key, labels=_labels(args.label)
    )
    out.line(run.id)
    if run.created is False:
        out.error(f"idempotency key {args.idempotency_key!r} matched existing run {run.id}")
    return follow(run, out) if args.wait else OK


def cmd_status(args: argparse.Namespace, client: Client, out: Output) -> int:
    info = client.get_run(args.run)
    out.line(f"run       {info.run_id}")
    out.line(f"workflow  {info.workflow_name}")
    out.line(f"status    {status_name(info.status)}")
    out.line(f"created   {datetime_text(info.created_at_ms)}")
    if info.ended_at_ms:
        out.line(f"ended     {datetime_text(info.ended_at_ms)}")
    if info.labels:
        out.line("labels    " + ", ".join(f"{k}={v}" for k, v in sorted(info.labels.items())))
    if info.message:
        out.line(f"message   {info.message}")
    if info.parent.run_id:
        out.line(f"parent    {info.parent.run_id} (node {info.parent.node_id})")
    if info.child_run_ids:
        out.line(f"children  {', '.join(info.child_run_ids)}")
    rows = [("NODE", "KIND", "STATE", "ATTEMPT", "ERROR")]
    for node in info.nodes:
        error = f"{node.error.type}: {node.error.message}" if node.error.type else ""
        rows.append((node.node_id, node.kind, node_state_name(node.state), str(node.attempt), error))
    out.line()
    for row in table(rows):
        out.line(row)
    waiting = [node for node in info.nodes if node.state == common_pb2.NODE_STATE_WAITING]
    if waiting:
        out.line()
    for node in waiting:
        child = node.waiting_for.removeprefix("child:")
        if child != node.waiting_for:
            out.line(f"waiting   {node.node_id} for child run {child}: graflow status {child}")
        else:
            out.line(
                f"waiting   {node.node_id} for feedback {node.waiting_for}: "
                f"graflow feedback show {info.run_id} {node.waiting_for}"
            )
    if info.status == common_pb2.RUN_STATUS_FAILED:
        out.line()
        out.line(f"error     {info.failed_node_id}: {info.error.type}: {info.error.message}")
        if info.error.traceback:
            out.line(info.error.traceback.rstrip())
    return _exit_code(info)


def cmd_watch(args: argparse.Namespace, client: Client, out: Output) -> int:
    return follow(client.run(args.run), out, args.cursor)


def cmd_runs(args: argparse.Namespace, client: Client, out: Output) -> int:
    try:
        runs = client.list_runs(limit=args.limit, status=args.status)
    except ValueError as exc:  # an unknown --status name
        raise UsageError(str(exc)) from exc
    rows = [("RUN", "WORKFLOW", "STATUS", "CREATED", "ENDED")]
    for info in runs:
        rows.append(
            (
                info.run_id,
                info.workflow_name,
                status_name(info.status),
                datetime_text(info.created_at_ms),
                datetime_text(info.ended_at_ms) if info.ended_at_ms else "",
            )
        )
    for row in table(rows):
        out.line(row)
    return OK


def cmd_cancel(args: argparse.Namespace, client: Client, out: Output) -> int:
    info = client.cancel(args.run, args.reason)
    out.line(f"run {info.run_id}: {status_name(info.status)}")
    return OK


def cmd_dev(args: argparse.Namespace, out: Output) -> int:
    from graflow_examples import EXAMPLES, TASK_MODULES

    workflow = load_workflow(EXAMPLES[args.example])
    _require_modules(args.tasks, "--tasks")
    out.line(f"starting redis, result-store, coordinator, scheduler and {args.workers} worker(s)...")
    stack = LocalStack(
        workers=args.workers,
        task_modules=[*TASK_MODULES, *args.tasks],
        ports={} if args.any_ports else _default_ports_if_free(),
    )
    code = RUN_FAILED
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # stop the children on SIGTERM too
    try:
        stack.start()
        out.line(f"stack ready (logs in {stack.log_dir}); running example {args.example!r}")
        with stack.client() as client:
            run = client.submit(workflow)
            out.line(f"run {run.id}")
            code = follow(run, out)
            if args.keep:
                _serve_until_interrupted(stack, out)
        return code
    finally:
        out.line("stopping the stack...")
        keep_logs = args.keep or code != OK
        stack.stop(keep_logs=keep_logs)
        if keep_logs:
            out.line(f"logs kept in {stack.log_dir}")
        signal.signal(signal.SIGTERM, previous)


# `graflow worker` flags and the worker's settings they set (flags override the environment).
WORKER_FLAGS = {
    "queues": "GRAFLOW_WORKER_QUEUES",
    "concurrency": "GRAFLOW_WORKER_CONCURRENCY",
    "redis": "GRAFLOW_WORKER_REDIS_URL",
    "scheduler": "GRAFLOW_WORKER_SCHEDULER_ADDRESS",
    "coordinator": "GRAFLOW_WORKER_COORDINATOR_ADDRESS",
    "result_store": "GRAFLOW_WORKER_RESULT_STORE_ADDRESS",
    "worker_id": "GRAFLOW_WORKER_WORKER_ID",
    "token": "GRAFLOW_WORKER_AUTH_TOKEN",
}


def worker_env(flags: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """The worker process's environment: ``environ`` with ``GRAFLOW_WORKER_*`` set from the given
    flags, the task modules from ``app`` (``-A``), and the current directory first on PYTHONPATH."""
    env = dict(environ)
    if flags.get("app"):
        env["GRAFLOW_WORKER_TASK_MODULES"] = ",".join(flags["app"])
    for flag, variable in WORKER_FLAGS.items():
        if flags.get(flag) is not None:
            env[variable] = str(flags[flag])
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), child_pythonpath()])
    return env


def cmd_worker(args: argparse.Namespace) -> NoReturn:
    """Replace this process by ``python -m graflow_worker`` (so signals reach the worker itself)."""
    if importlib.util.find_spec("graflow_worker") is None:
        raise UsageError("the worker is not installed: pip install 'graflow[worker]'")
    _require_modules(args.app, "-A")
    env = worker_env(vars(args), os.environ)
    os.execvpe(sys.executable, [sys.executable, "-m", "graflow_worker"], env)


def _raise_interrupt(_signum: int, _frame: Any) -> NoReturn:
    raise KeyboardInterrupt


def _default_ports_if_free() -> dict[str, int]:
    """The services' usual ports where nothing listens, so default clients find the stack."""
    defaults = {name: int(address.rsplit(":", 1)[1]) for name, address in DEFAULT_ADDRESSES.items()}
    free = {}
    for name, port in defaults.items():
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        free[name] = port
    return free


def _serve_until_interrupted(stack: LocalStack, out: Output) -> None:
    out.line()
    out.line("the stack keeps running; point clients at it with:")
    for name, value in stack.client_env().items():
        out.line(f"  export {name}={value}")
    out.line("addresses: " + ", ".join(f"{k} {v}" for k, v in stack.addresses.items()))
    out.line(f"logs: {stack.log_dir}")
    out.line("press Ctrl-C to stop")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


def _exit_code(info: RunInfo) -> int:
    return RUN_FAILED if info.status in ENDED_STATUSES - {common_pb2.RUN_STATUS_SUCCEEDED} else OK


def build_parser() -> argparse.ArgumentParser:
    from graflow_examples import EXAMPLES

    parser = argparse.ArgumentParser(prog="graflow", description="Run and inspect Graflow workflows.")
    parser.add_argument("--version", action="version", version=f"graflow {__version__}")
    parser.add_argument(
        "--scheduler", help="scheduler host:port (env GRAFLOW_SCHEDULER_ADDRESS, default 127.0.0.1:50051)"
    )
    parser.add_argument(
        "--result-store",
        help="result-store host:port (env GRAFLOW_RESULT_STORE_ADDRESS, default 127.0.0.1:50053)",
    )
    cli_ops.add_global_options(parser)
    parser.add_argument("--token", help="bearer token sent to the services (env GRAFLOW_AUTH_TOKEN)")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="deadline of each call in seconds (default 10)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = commands.add_parser("dev", help="start a local stack, run an example workflow, stop")
    dev.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    dev.add_argument("--keep", action="store_true", help="keep the stack running until Ctrl-C")
    dev.add_argument(
        "--any-ports",
        action="store_true",
        help="use free ports even where the default ports (50051-50053) are available",
    )
    dev.add_argument(
        "--example", choices=sorted(EXAMPLES), default="etl", help="example workflow (default etl)"
    )

    dev.add_argument(
        "--tasks",
        action="append",
        default=[],
        metavar="MODULE",
        help="also load this module's tasks in the stack's workers (repeatable; queue 'default')",
    )

    worker = commands.add_parser(
        "worker", help="run a worker with your task modules (like celery -A MODULE worker)"
    )
    worker.add_argument(
        "-A",
        "--app",
        action="append",
        default=[],
        metavar="MODULE",
        help="a module whose @task functions the worker runs "
        "(repeatable; env GRAFLOW_WORKER_TASK_MODULES)",
    )
    worker.add_argument(
        "-Q",
        "--queues",
        metavar="QUEUE,...",
        help="queues to read (env GRAFLOW_WORKER_QUEUES, default 'default')",
    )
    worker.add_argument(
        "-c", "--concurrency", type=int, help="deliveries held at once (env GRAFLOW_WORKER_CONCURRENCY)"
    )
    worker.add_argument("--redis", metavar="URL", help="Redis URL (env GRAFLOW_WORKER_REDIS_URL)")
    worker.add_argument("--worker-id", metavar="ID", help="worker id (env GRAFLOW_WORKER_WORKER_ID)")
    for flag, name in (
        ("--scheduler", "SCHEDULER"),
        ("--coordinator", "COORDINATOR"),
        ("--result-store", "RESULT_STORE"),
    ):
        worker.add_argument(
            flag, metavar="ADDR", default=argparse.SUPPRESS, help=f"env GRAFLOW_WORKER_{name}_ADDRESS"
        )

    submit = commands.add_parser("submit", help="submit MODULE:WORKFLOW")
    submit.add_argument("target", metavar="MODULE:WORKFLOW", help="a Workflow or a function returning one")
    submit.add_argument("--wait", action="store_true", help="watch the run and print its result")
    submit.add_argument("--idempotency-key", help="repeat-safe submit: the same key gives the same run")
    submit.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="label (repeatable)"
    )

    status = commands.add_parser("status", help="a run's status, nodes and error")
    status.add_argument("run", metavar="RUN")
    watch = commands.add_parser("watch", help="print a run's events until it ends")
    watch.add_argument("run", metavar="RUN")
    watch.add_argument("--cursor", help="resume after this event cursor")
    runs = commands.add_parser("runs", help="list runs, newest first")
    runs.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    runs.add_argument(
        "--status", help="only runs with this status (running, succeeded, failed, canceled, paused)"
    )
    cancel = commands.add_parser("cancel", help="cancel a run")
    cancel.add_argument("run", metavar="RUN")
    cancel.add_argument("--reason", default="canceled from the graflow CLI")
    cli_feedback.add_command(commands)
    cli_ops.add_commands(commands)
    return parser


COMMANDS = {
    "submit": cmd_submit,
    "status": cmd_status,
    "watch": cmd_watch,
    "runs": cmd_runs,
    "cancel": cmd_cancel,
    cli_feedback.COMMAND: cli_feedback.run_command,
}


def run(argv: Sequence[str] | None = None, out: Output | None = None) -> int:
    """Run one command; returns the exit code (see the module docstring)."""
    out = out or Output()
    args = build_parser().parse_args(argv)
    try:
        if args.command in cli_ops.COMMANDS:
            return cli_ops.run_command(args, out)
        if args.command == "dev":
            return cmd_dev(args, out)
        if args.command == "worker":
            cmd_worker(args)
        with Client(args.scheduler, args.result_store, auth_token=args.token, timeout=args.timeout) as client:
            return COMMANDS[args.command](args, client, out)
    except (
        ServiceUnavailableError,
        ServiceCallError,
        RunNotFoundError,
        WorkflowDefinitionError,
        UsageError,
        LocalStackError,
    ) as exc:
        out.error(str(exc))
        return USAGE
    except KeyboardInterrupt:
        out.error("interrupted")
        return INTERRUPTED


def main(argv: Sequence[str] | None = None) -> NoReturn:
    try:
        code = run(argv)
    except BrokenPipeError:  # `graflow runs | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = OK
    raise SystemExit(code)


if __name__ == "__main__":
    main()
