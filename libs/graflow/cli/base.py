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

    An address, token or TLS file left None is resolved by :class:`~graflow.Client` /
    :class:`~graflow.operators.Operators` (``GRAFLOW_CLIENT_*`` variables, then the defaults)."""

    out: Output
    scheduler: str | None = None
    result_store: str | None = None
    coordinator: str | None = None
    token: str | None = None
    timeout: float = 10.0
    # TLS files (``GRAFLOW_CLIENT_TLS_*_FILE`` when None).
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    @property
    def tls(self) -> dict[str, str | None]:
        return {"tls_ca_file": self.tls_ca_file, "tls_cert_file": self.tls_cert_file,
                "tls_key_file": self.tls_key_file}

    def client(self) -> Client:
        return Client(
            self.scheduler, self.result_store, auth_token=self.token, timeout=self.timeout, **self.tls
        )

    def operators(self) -> Operators:
        return Operators(self.coordinator, auth_token=self.token, timeout=self.timeout, **self.tls)


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
