"""Run ids: 26 characters, time-sortable and unique (ULID layout: 48-bit milliseconds then 80
random bits, Crockford base32)."""

from __future__ import annotations

import re
import secrets
import time

from graflow_runtime import keys

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
RUN_ID_PATTERN = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_run_id(now_ms: int | None = None, *, cell: int | None = None) -> str:
    """A new run id; ids of later milliseconds sort after earlier ones. With ``cell``, an id of a
    run of that cell (graflow_runtime.keys.cell_of): random bits are drawn again until the id falls
    in it, ``cells`` draws on average."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    head = _encode(ms & (2**48 - 1), 10)
    while True:
        run_id = head + _encode(secrets.randbits(80), 16)
        if cell is None or keys.cell_of(run_id) == cell:
            return run_id


def run_cell(*, parent_run_id: str = "", idempotency_key: str = "") -> int | None:
    """The cell a submitted run is created in (docs/architecture.md, "Redis Cluster: cells"): a
    child run's in its parent's cell (the scripts that link them touch both runs' keys), a run
    with an idempotency key in that key's cell (the key is looked up there), else None: any cell."""
    if parent_run_id:
        return keys.cell_of(parent_run_id)
    if idempotency_key:
        return keys.cell_of_idempotency_key(idempotency_key)
    return None


def is_run_id(value: str) -> bool:
    return bool(RUN_ID_PATTERN.fullmatch(value))


def run_id_problem(value: str) -> str | None:
    """Why ``value`` is not a run id (for INVALID_ARGUMENT), or None when it is one."""
    if not value:
        return "run_id is empty"
    if not is_run_id(value):
        return (
            f"run_id {value[:64]!r} is malformed: expected 26 characters of Crockford base32 "
            "(0-9, A-Z without I, L, O, U)"
        )
    return None
