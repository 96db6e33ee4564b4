"""Running Graflow on this machine:

    graflow dev [--workers N] [--keep] [--any-ports] [--example etl] [--tasks MODULE]...
                [--tls-dir DIR [--mtls]] [--redis-acl] [--redis-tls CA CERT KEY]
                [--redis-cluster | --redis-cluster-url URL] [--redis-cells N]
    graflow worker -A MODULE [-A MODULE]... [-Q QUEUE,...] [-c N] [--redis URL] [--scheduler ADDR]
                   [--coordinator ADDR] [--result-store ADDR] [--worker-id ID]

``dev`` starts a private redis-server and the four services (:class:`~graflow.cli.devstack.LocalStack`),
runs an example workflow, and stops them (``--keep``: until Ctrl-C). ``--tasks`` loads your modules
in its workers too, on the default queue. ``--tls-dir`` runs the whole stack with TLS on the
certificates in DIR (``ca.crt``, ``tls.crt``, ``tls.key``; made by you, none is generated), ``--mtls``
with client certificates required. ``--redis-acl`` and ``--redis-tls`` close its Redis as in
production (docs/security.md, "Redis"): one ACL user per service, TLS only. ``--redis-cluster``
starts a local Redis Cluster instead (6 redis-server processes: 3 primaries, 3 replicas; with
``--redis-acl`` they load the ACL users),
``--redis-cluster-url`` uses an existing one; ``--redis-cells N`` cuts the keyspace in N cells
(docs/architecture.md, "Redis Cluster: cells"; on a cluster, enough cells to spread over its
primaries). The web console starts too (``--no-console``: not) and its URL is printed
(``console: http://127.0.0.1:8480/``; docs/console.md).

``worker`` is ``celery -A proj worker`` for Graflow: it replaces itself (exec, so signals reach the
worker directly) with ``python -m graflow_worker``, its ``GRAFLOW_WORKER_*`` settings taken from the
flags, else from the environment, and the current directory first on ``PYTHONPATH`` so that
``-A mytasks`` finds ``mytasks.py`` here. The global ``--token`` and ``--tls-*-file`` options become
the worker's token and TLS files.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import click

from graflow.cli.base import OK, RUN_FAILED, App, pass_app
from graflow.cli.devstack import LocalStack, StackTls, child_pythonpath
from graflow.cli.output import Output
from graflow.cli.runs import follow
from graflow.cli.workflows import load_workflow, require_modules
from graflow.errors import UsageError
from graflow_examples import EXAMPLES, TASK_MODULES
from graflow_runtime.addresses import (
    DEFAULT_COORDINATOR_ADDRESS,
    DEFAULT_RESULT_STORE_ADDRESS,
    DEFAULT_SCHEDULER_ADDRESS,
)
from graflow_runtime.keys import MAX_CELLS
from graflow_runtime.local_redis import RedisTls
from graflow_runtime.redis_client import redacted

DEFAULT_ADDRESSES = {
    "scheduler": DEFAULT_SCHEDULER_ADDRESS,
    "coordinator": DEFAULT_COORDINATOR_ADDRESS,
    "result-store": DEFAULT_RESULT_STORE_ADDRESS,
    # The web console's default port (graflow_console.settings.DEFAULT_CONSOLE_PORT).
    "console": "127.0.0.1:8480",
}
# Cells of `graflow dev --redis-cluster` unless --redis-cells says: four per primary of the local
# cluster, as in the Kubernetes manifests (deploy/k8s/cluster).
CLUSTER_CELLS = 12
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
    "tls_ca_file": "GRAFLOW_WORKER_TLS_CA_FILE",
    "tls_cert_file": "GRAFLOW_WORKER_TLS_CERT_FILE",
    "tls_key_file": "GRAFLOW_WORKER_TLS_KEY_FILE",
}


@click.command()
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True, help="worker processes")
@click.option("--keep", is_flag=True, help="keep the stack running until Ctrl-C (prints its addresses)")
@click.option(
    "--any-ports",
    is_flag=True,
    help="use free ports even where the default ports (50051-50053) are available",
)
@click.option(
    "--example",
    type=click.Choice(sorted(EXAMPLES)),
    default="etl",
    show_default=True,
    help="example workflow",
)
@click.option(
    "--tasks",
    multiple=True,
    metavar="MODULE",
    help="run your module's tasks in the stack's workers instead of the examples (repeatable; queue "
    "'default'); runs no example and keeps the stack up until Ctrl-C",
)
@click.option(
    "--tls-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="run the stack with TLS on DIR/ca.crt, DIR/tls.crt and DIR/tls.key (valid for 127.0.0.1)",
)
@click.option("--mtls", is_flag=True, help="with --tls-dir: the servers require client certificates")
@click.option(
    "--redis-acl",
    is_flag=True,
    help="load the services' Redis ACL users (random passwords): each service connects as its own",
)
@click.option(
    "--redis-tls",
    nargs=3,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="CA CERT KEY",
    help="serve Redis over TLS only, with this certificate and key; the services verify it with the CA",
)
@click.option(
    "--redis-cluster",
    is_flag=True,
    help="start a local Redis Cluster (3 primaries, 3 replicas) instead of one redis-server",
)
@click.option("--redis-cluster-url", metavar="URL", help="use this Redis Cluster (any node's URL)")
@click.option(
    "--redis-cells",
    type=click.IntRange(min=1, max=MAX_CELLS),
    default=None,
    help="cells of the keyspace [default: 12 on a cluster, 1 on one redis-server]",
)
@click.option(
    "--metrics",
    is_flag=True,
    help="every process serves Prometheus /metrics on a free port (printed; docs/operations.md)",
)
@click.option(
    "--console/--no-console",
    default=True,
    show_default=True,
    help="also start the web console (docs/console.md) and print its URL",
)
@pass_app
def dev(
    app: App,
    workers: int,
    keep: bool,
    any_ports: bool,
    example: str,
    tasks: tuple[str, ...],
    tls_dir: Path | None,
    mtls: bool,
    redis_acl: bool,
    redis_tls: tuple[Path, Path, Path] | None,
    redis_cluster: bool,
    redis_cluster_url: str | None,
    redis_cells: int | None,
    metrics: bool,
    console: bool,
) -> int:
    """Start a local stack (redis-server + the four services), run an example workflow, stop.

    With ``--tasks``, the workers run your modules' tasks (and not the examples', whose names could
    clash with yours) and the stack stays up for your workflows until Ctrl-C."""
    out = app.out
    require_modules(tasks, "--tasks")
    if mtls and tls_dir is None:
        raise UsageError("--mtls needs --tls-dir DIR (the CA and the certificate of the stack)")
    tls = StackTls.from_dir(tls_dir, client_auth=mtls) if tls_dir else None
    cluster: bool | str = redis_cluster_url or redis_cluster
    if redis_cluster and redis_cluster_url:
        raise UsageError("--redis-cluster starts a cluster, --redis-cluster-url uses one: give one of them")
    if cluster and redis_tls:
        raise UsageError("--redis-tls applies to the single redis-server, not to a cluster")
    if redis_cluster_url and redis_acl:
        raise UsageError(
            "--redis-acl loads users into a Redis the stack starts, not into --redis-cluster-url"
        )
    cells = redis_cells or (CLUSTER_CELLS if cluster else 1)
    redis = "a Redis Cluster" if cluster else "redis"
    out.line(f"starting {redis}, result-store, coordinator, scheduler and {workers} worker(s)...")
    stack = LocalStack(
        workers=workers,
        task_modules=list(tasks) or TASK_MODULES,
        ports={} if any_ports else _default_ports_if_free(),
        tls=tls,
        redis_tls=RedisTls(*redis_tls) if redis_tls else None,
        redis_acl=redis_acl,
        redis_cluster=cluster,
        cells=cells,
        metrics=metrics,
        console=console,
    )
    code = RUN_FAILED
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # stop the children on SIGTERM too
    try:
        stack.start()
        for name in stack.metrics_ports:
            out.line(f"metrics of {name}: {stack.metrics_url(name)}")
        if not tasks:  # the workers run the examples' tasks
            register_examples(stack, out)
        if console:
            out.line(f"console: {stack.console_url} (auth is off: sign in with any token)")
        if tasks:
            out.line(f"stack ready (logs in {stack.log_dir}); workers run the tasks of {', '.join(tasks)}")
            code = OK
            _serve_until_interrupted(stack, out)
            return code
        out.line(f"stack ready (logs in {stack.log_dir}); running example {example!r}")
        with stack.client() as client:
            run = client.submit(load_workflow(EXAMPLES[example]))
            out.line(f"run {run.id}")
            code = follow(run, out)
            if keep:
                _serve_until_interrupted(stack, out)
        return code
    finally:
        out.line("stopping the stack...")
        keep_logs = keep or code != OK
        stack.stop(keep_logs=keep_logs)
        if keep_logs:
            out.line(f"logs kept in {stack.log_dir}")
        signal.signal(signal.SIGTERM, previous)


def register_examples(stack: LocalStack, out: Output) -> None:
    """Register every example workflow under its name (graflow_examples.EXAMPLES), so that the
    console and ``graflow workflows submit NAME`` can start them."""
    with stack.client() as client:
        for name, target in sorted(EXAMPLES.items()):
            client.register_workflow(load_workflow(target), name=name, description=f"example {target}")
    out.line(f"registered example workflows: {', '.join(sorted(EXAMPLES))}")


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
    out.line("the stack keeps running; point clients and workers of your own at it with:")
    for name, value in {**stack.client_env(), **stack.worker_env()}.items():
        out.line(f"  export {name}={value}")
    out.line("addresses: " + ", ".join(f"{k} {redacted(v)}" for k, v in stack.addresses.items()))
    out.line(f"logs: {stack.log_dir}")
    out.line("press Ctrl-C to stop")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


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


@click.command(context_settings={"show_default": True})
@click.option(
    "-A",
    "--app",
    "app_modules",
    multiple=True,
    metavar="MODULE",
    help="a module whose @task functions the worker runs (repeatable) [env GRAFLOW_WORKER_TASK_MODULES]",
)
@click.option(
    "-Q", "--queues", metavar="QUEUE,...", help="queues to read [env GRAFLOW_WORKER_QUEUES; default: default]"
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    metavar="N",
    help="deliveries held at once [env GRAFLOW_WORKER_CONCURRENCY]",
)
@click.option("--redis", metavar="URL", help="Redis URL [env GRAFLOW_WORKER_REDIS_URL]")
@click.option("--scheduler", metavar="ADDR", help="for child runs [env GRAFLOW_WORKER_SCHEDULER_ADDRESS]")
@click.option("--coordinator", metavar="ADDR", help="[env GRAFLOW_WORKER_COORDINATOR_ADDRESS]")
@click.option("--result-store", metavar="ADDR", help="[env GRAFLOW_WORKER_RESULT_STORE_ADDRESS]")
@click.option("--worker-id", metavar="ID", help="stable per deployment slot [env GRAFLOW_WORKER_WORKER_ID]")
@pass_app
def worker(app: App, app_modules: tuple[str, ...], **flags: Any) -> NoReturn:
    """Run a worker with your task modules (like celery -A MODULE worker); exec's python -m graflow_worker."""
    if importlib.util.find_spec("graflow_worker") is None:
        raise UsageError("the worker is not installed: pip install 'graflow[worker]'")
    require_modules(app_modules, "-A")
    given = {
        "scheduler": app.scheduler,
        "coordinator": app.coordinator,
        "result_store": app.result_store,
        "token": app.token,
        **app.tls,
        **{name: value for name, value in flags.items() if value is not None},
        "app": app_modules,
    }
    os.execvpe(sys.executable, [sys.executable, "-m", "graflow_worker"], worker_env(given, os.environ))


COMMANDS = (dev, worker)
