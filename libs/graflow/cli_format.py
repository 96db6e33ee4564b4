"""How the ``graflow`` commands print times and tables."""

from __future__ import annotations

from datetime import datetime


def datetime_text(ms: int) -> str:
    """Local time of an epoch-milliseconds value ("" for 0)."""
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else ""


def table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as lines with aligned columns (the first row is the header)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
