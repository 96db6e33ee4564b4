"""What every ``graflow`` command shares: exit codes, the usage error, the connection options of the
command group and the ``-o/--output`` option."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import click

from graflow.cli.output import Output
from graflow.client import Client
from graflow.errors import UsageError
from graflow.operators import Operators

OK, RUN_FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130


@dataclass
class App:
    """The command group's options and the output; ``ctx.obj`` of every command.

    An address or token left None is resolved by :class:`~graflow.Client` /
    :class:`~graflow.operators.Operators` (``GRAFLOW_CLIENT_*`` variables, then the defaults)."""

    out: Output
    scheduler: str | None = None
    result_store: str | None = None
    coordinator: str | None = None
    token: str | None = None
    timeout: float = 10.0

    def client(self) -> Client:
        return Client(self.scheduler, self.result_store, auth_token=self.token, timeout=self.timeout)

    def operators(self) -> Operators:
        return Operators(self.coordinator, auth_token=self.token, timeout=self.timeout)


pass_app = click.make_pass_decorator(App)

output_option = click.option(
    "-o",
    "--output",
    "output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table: for people (plain text when piped); json: for scripts and jq",
)


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what} is not JSON: {exc}") from None
