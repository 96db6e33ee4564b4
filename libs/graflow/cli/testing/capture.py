"""Helpers of the CLI's tests: the CLI run in-process with its output captured, and the `export`
lines a `graflow dev --keep` process prints."""

from __future__ import annotations

import io
from collections.abc import Iterable

from graflow.cli import Output, run


class Captured:
    """``cli("runs", "-o", "json")`` runs the CLI in this process; ``.out``/``.err`` hold what it printed."""

    def __init__(self) -> None:
        self.stdout, self.stderr = io.StringIO(), io.StringIO()
        self.output = Output(self.stdout, self.stderr)

    def __call__(self, *argv: str) -> int:
        return run(list(argv), self.output)

    @property
    def out(self) -> str:
        return self.stdout.getvalue()

    @property
    def err(self) -> str:
        return self.stderr.getvalue()


def read_dev_exports(lines: Iterable[str]) -> dict[str, str]:
    """The ``export NAME=value`` lines of a ``graflow dev --keep`` until it says it is ready (or
    its output ends: no unbounded wait on a process that died)."""
    exports: dict[str, str] = {}
    for line in lines:
        if line.strip().startswith("export "):
            name, _, value = line.strip().removeprefix("export ").partition("=")
            exports[name] = value
        if line.startswith("press Ctrl-C"):
            break
    return exports
