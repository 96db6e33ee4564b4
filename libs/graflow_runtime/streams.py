"""Redis Streams helpers shared by the services: entry ids as comparable pairs, a stream's tail,
trimming below a floor in bounded calls, and the one way to write a dead letter."""

from __future__ import annotations

import re
from collections.abc import Mapping

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from graflow_runtime import keys
from graflow_runtime.limits import DEAD_LETTERS_MAXLEN

# Entries one `XTRIM MINID ~` call may evict (Redis' default LIMIT), and calls per trim (so at most
# 1,000,000 entries per trim).
TRIM_LIMIT = 10_000
TRIM_MAX_CALLS = 100


# An entry id as Redis takes it: ``<ms>-<seq>`` or ``<ms>``, each part an unsigned 64-bit number.
STREAM_ID_RULE = "expected '<ms>-<seq>' or '<ms>' in ASCII digits below 2^64, e.g. '1700000000000-0'"
_STREAM_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?", re.ASCII)
_U64_MAX = 2**64 - 1


def is_stream_id(value: str) -> bool:
    """Whether ``value`` is an entry id Redis accepts (nothing around it, not even a newline)."""
    match = _STREAM_ID.fullmatch(value)
    return match is not None and all(int(part or 0) <= _U64_MAX for part in match.groups())


def stream_id(value: bytes | str) -> tuple[int, int]:
    """A stream entry id (``<ms>-<seq>``, or ``<ms>``) as a comparable pair."""
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


# The field of a dead-letter entry (``DeadLetter`` bytes).
DEAD_LETTER_FIELD = b"d"


def add_dead_letter(
    pipe: Pipeline,
    letter: bytes,
    extra: Mapping[bytes, bytes] | None = None,
    *,
    cell: int = 0,
    maxlen: int = DEAD_LETTERS_MAXLEN,
) -> None:
    """Queue on ``pipe`` the append of ``letter`` (``DeadLetter`` bytes, with the ``extra`` fields:
    the signature of the entry it holds) to the dead-letter stream of ``cell`` (the cell of the
    entry or outcome it holds, so that a ``MULTI`` with its acknowledgement stays in one slot),
    which keeps about ``maxlen`` entries (``MAXLEN ~``: Redis trims whole stream nodes, so up to
    one node, 100 entries, more). Every writer uses it: without a cap the stream only grew."""
    fields = {DEAD_LETTER_FIELD: letter, **(extra or {})}
    pipe.xadd(keys.dead_letters_stream(cell), fields, maxlen=maxlen, approximate=True)


async def tail_id(redis: aioredis.Redis, stream: str) -> bytes:
    """The id of the stream's newest entry (``0-0`` when it is empty or missing): a reader that
    starts from it reads only what is appended afterwards."""
    newest = await redis.xrevrange(stream, count=1)
    return newest[0][0] if newest else b"0-0"


async def trim_below(redis: aioredis.Redis, stream: str, floor: tuple[int, int]) -> int:
    """``XTRIM stream MINID ~ floor`` until nothing goes; returns how many entries were evicted.

    One call evicts at most :data:`TRIM_LIMIT` entries, so a single call per pass would cap trimming
    at that many entries per interval and the stream would grow for ever above that rate.
    """
    removed = 0
    minid = f"{floor[0]}-{floor[1]}"
    for _ in range(TRIM_MAX_CALLS):
        evicted = await redis.xtrim(stream, minid=minid, approximate=True, limit=TRIM_LIMIT)
        removed += evicted
        if not evicted:
            break
    return removed
