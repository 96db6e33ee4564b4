"""What the ``graflow`` commands print, and the only place they print it.

On a terminal: rich tables and colours. When piped: the same tables as plain, stable text (columns
two spaces apart, no colours, no trailing spaces, never wrapped), which scripts and tests read.
With ``-o json``: one JSON document, or JSON lines for streaming commands. Results go to stdout,
problems to stderr.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, TextIO

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

# Wide enough that piped output is never wrapped.
_PIPE_WIDTH = 100_000
# Colours of run statuses and node states on a terminal.
STATE_STYLES = {
    "SUCCEEDED": "green",
    "FAILED": "bold red",
    "CANCELED": "magenta",
    "SKIPPED": "dim",
    "WAITING": "yellow",
    "PAUSED": "yellow",
    "RUNNING": "cyan",
    "READY": "cyan",
    "PENDING": "dim",
}


class Output:
    """Everything the CLI shows. ``stdout``/``stderr`` default to the process's streams."""

    def __init__(self, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self._out = stdout or sys.stdout
        self._err = stderr or sys.stderr
        self.console = Console(file=self._out, highlight=False, emoji=False)
        if not self.console.is_terminal:
            self.console = Console(
                file=self._out, highlight=False, emoji=False, width=_PIPE_WIDTH, color_system=None
            )
        self._err_console = Console(file=self._err, highlight=False, emoji=False, soft_wrap=True)

    @property
    def stderr(self) -> TextIO:
        return self._err

    @property
    def is_terminal(self) -> bool:
        return self.console.is_terminal

    def line(self, text: str = "", style: str | None = None) -> None:
        """One line of text as given (no markup is interpreted)."""
        self.console.print(Text(text, style=style or ""), soft_wrap=True)

    def error(self, text: str) -> None:
        self._err_console.print(Text(f"graflow: error: {text}", style="red"))

    def warning(self, text: str) -> None:
        self._err_console.print(Text(f"graflow: {text}", style="yellow"))

    def render(self, renderable: RenderableType) -> None:
        """A rich renderable; when piped, as plain text without trailing spaces."""
        if self.is_terminal:
            self.console.print(renderable)
            return
        with self.console.capture() as captured:
            self.console.print(renderable)
        for text in captured.get().splitlines():
            self._out.write(text.rstrip() + "\n")
        self._out.flush()

    def table(
        self, headers: Sequence[str], rows: Iterable[Sequence[str]], state_column: int | None = None
    ) -> None:
        """Rows under a header; the cells of ``state_column`` are coloured by state on a terminal."""
        table = Table(header_style="bold", box=None, pad_edge=False, padding=(0, 2, 0, 0))
        for header in headers:
            table.add_column(header, no_wrap=not self.is_terminal)
        for row in rows:
            table.add_row(
                *(
                    Text(cell, style=STATE_STYLES.get(cell, "") if i == state_column else "")
                    for i, cell in enumerate(row)
                )
            )
        self.render(table)

    def fields(self, rows: Iterable[tuple[str, str]], key_width: int) -> None:
        """``key  value`` lines, keys padded to ``key_width``; a status or state coloured on a terminal."""
        for key, value in rows:
            line = Text(key.ljust(key_width), style="bold")
            line.append(value, style=STATE_STYLES.get(value, "") if key in ("status", "state") else "")
            self.console.print(line, soft_wrap=True)

    def json(self, value: Any) -> None:
        """One JSON document (``-o json``)."""
        self._out.write(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
        self._out.flush()

    def json_line(self, value: Any) -> None:
        """One line of a JSON-lines stream."""
        self._out.write(json.dumps(value, ensure_ascii=False, sort_keys=True) + "\n")
        self._out.flush()


def datetime_text(ms: int) -> str:
    """Local time of an epoch-milliseconds value ("" for 0)."""
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else ""


def format_value(value: Any) -> str:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def json_value(value: Any) -> Any:
    """A task result as JSON (bytes results as base64 with their length)."""
    if isinstance(value, bytes):
        return {"bytes_base64": base64.b64encode(value).decode(), "length": len(value)}
    return value


def _enum_prefix(enum_name: str) -> str:
    """``RunStatus`` -> ``RUN_STATUS_`` (the contract's enum value prefix)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum_name).upper() + "_"


def message_data(message: Message) -> dict[str, Any]:
    """A contract message as JSON data for ``-o json``: every field by its proto name, enums by
    their short name (``SUCCEEDED``), 64-bit integers as numbers, ``*_json`` bytes as the JSON
    they hold, other bytes as base64."""
    return {f.name: _field_data(f, getattr(message, f.name)) for f in message.DESCRIPTOR.fields}


def _field_data(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        return {key: _scalar_data(value_field, item) for key, item in value.items()}
    if field.is_repeated:
        return [_scalar_data(field, item) for item in value]
    return _scalar_data(field, value)


def _scalar_data(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_data(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        known = field.enum_type.values_by_number.get(value)
        return known.name.removeprefix(_enum_prefix(field.enum_type.name)) if known else value
    if field.type == FieldDescriptor.TYPE_BYTES:
        if field.name.endswith("_json"):
            try:
                return json.loads(value) if value else None
            except ValueError:
                pass  # not JSON after all: shown as base64 like other bytes
        return base64.b64encode(value).decode()
    return value
