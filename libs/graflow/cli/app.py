"""The ``graflow`` command group: global options, the commands, exit codes, shell completion.

Exit codes: 0 ok, 1 the run failed or was canceled, 2 usage or connection errors, 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import click
from click.shell_completion import get_completion_class

from graflow.cli import dev, feedback, ops, registry, runs
from graflow.cli.base import INTERRUPTED, OK, USAGE, App
from graflow.cli.output import Output
from graflow.errors import (
    DeadLetterNotFoundError,
    FeedbackError,
    LocalStackError,
    RunNotFoundError,
    ServiceCallError,
    ServiceUnavailableError,
    UsageError,
    WorkflowDefinitionError,
    WorkflowNotFoundError,
)
from graflow_runtime.addresses import AddressError
from graflow_runtime.tls import TlsFileError
from graflow_runtime.version import __version__

PROG = "graflow"
COMPLETE_VAR = "_GRAFLOW_COMPLETE"
SHELLS = ("bash", "zsh", "fish")
# Errors a user can act on: printed as one line, exit code 2.
USER_ERRORS = (
    ServiceUnavailableError,
    ServiceCallError,
    RunNotFoundError,
    WorkflowDefinitionError,
    FeedbackError,
    DeadLetterNotFoundError,
    WorkflowNotFoundError,
    UsageError,
    LocalStackError,
    TlsFileError,
    AddressError,
)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        ctx.find_object(App).out.line(f"{PROG} {__version__}")
        ctx.exit(OK)


@click.group(name=PROG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="print the version",
)
@click.option(
    "--scheduler",
    metavar="ADDR",
    help="scheduler host:port; replicas: host:port,host:port or dns:///name:port "
    "[env GRAFLOW_CLIENT_SCHEDULER_ADDRESS]",
)
@click.option(
    "--result-store",
    metavar="ADDR",
    help="result-store address (as --scheduler) [env GRAFLOW_CLIENT_RESULT_STORE_ADDRESS]",
)
@click.option(
    "--coordinator",
    metavar="ADDR",
    help="coordinator address (as --scheduler), for workers and dead-letters "
    "[env GRAFLOW_CLIENT_COORDINATOR_ADDRESS]",
)
@click.option("--token", help="bearer token sent to the services [env GRAFLOW_CLIENT_AUTH_TOKEN]")
@click.option(
    "--timeout", type=float, default=10.0, show_default=True, help="deadline of each call in seconds"
)
@click.option(
    "--tls-ca-file",
    metavar="PEM",
    help="use TLS, trusting servers signed by this CA [env GRAFLOW_CLIENT_TLS_CA_FILE]",
)
@click.option(
    "--tls-cert-file", metavar="PEM", help="client certificate, for mTLS [env GRAFLOW_CLIENT_TLS_CERT_FILE]"
)
@click.option("--tls-key-file", metavar="PEM", help="its private key [env GRAFLOW_CLIENT_TLS_KEY_FILE]")
@click.pass_context
def graflow(
    ctx: click.Context,
    scheduler: str | None,
    result_store: str | None,
    coordinator: str | None,
    token: str | None,
    timeout: float,
    tls_ca_file: str | None,
    tls_cert_file: str | None,
    tls_key_file: str | None,
) -> None:
    """Run and inspect Graflow workflows. Addresses default to a local stack (graflow dev)."""
    app = ctx.find_object(App)
    app.scheduler, app.result_store, app.coordinator = scheduler, result_store, coordinator
    app.token, app.timeout = token, timeout
    app.tls_ca_file, app.tls_cert_file, app.tls_key_file = tls_ca_file, tls_cert_file, tls_key_file


@graflow.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_obj
def completion(app: App, shell: str) -> int:
    """Print the shell completion script, e.g. eval "$(graflow completion bash)"."""
    script = get_completion_class(shell)(graflow, {}, PROG, COMPLETE_VAR).source()  # type: ignore[misc]
    for line in script.splitlines():
        app.out.line(line)
    return OK


for command in (*dev.COMMANDS, *runs.COMMANDS, *registry.COMMANDS, feedback.feedback, *ops.COMMANDS):
    graflow.add_command(command)


def run(argv: Sequence[str] | None = None, out: Output | None = None) -> int:
    """Run one command; returns the exit code (see the module docstring)."""
    out = out or Output()
    try:
        code = graflow.main(
            args=list(sys.argv[1:] if argv is None else argv),
            prog_name=PROG,
            complete_var=COMPLETE_VAR,
            standalone_mode=False,
            obj=App(out),
        )
    except click.ClickException as exc:  # bad command line, from click's parsing
        exc.show(file=out.stderr)
        return USAGE
    except USER_ERRORS as exc:
        out.error(str(exc))
        return USAGE
    except (KeyboardInterrupt, click.Abort):
        out.error("interrupted")
        return INTERRUPTED
    return code if isinstance(code, int) else OK


def main(argv: Sequence[str] | None = None) -> NoReturn:
    try:
        code = run(argv)
    except BrokenPipeError:  # `graflow runs | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = OK
    raise SystemExit(code)
