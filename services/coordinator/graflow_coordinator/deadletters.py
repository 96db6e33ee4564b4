"""Dead letters: messages that could not be processed, kept in ``gf:deadletters`` with the reason.

Each entry has one field ``d`` = ``DeadLetter`` bytes (its ``id`` is the entry id, filled in when
read). Workers dead-letter undecodable envelopes through the same stream and format; the
coordinator dead-letters poison messages (see :mod:`reclaim`). Operators list them and replay them:
a replay appends ``raw`` to the dead letter's queue as a new delivery (to the lane its priority
selects) and deletes the dead letter,
atomically and only once (XADD happens only if this call's XDEL removed the entry).

A replayed delivery is the original message, attempt number included: its outcome counts only if
that attempt is still the node's current one. A poison message's node already failed
(``PoisonMessage``), so replaying it runs the task again (e.g. to check a fixed worker) but does
not reopen its run.

A replay keeps the signature the message had (the dead letter entry carries the original entry's
``k`` and ``s`` beside ``d``). With signing keys, a dead letter whose message does not verify with
them (forged, tampered, unsigned, or signed with a key since removed) is never replayed, so a
replay cannot turn a forged message, or a forged dead letter, into a signed one
(FAILED_PRECONDITION naming ``BadSignature``; ``all`` leaves it in place with a warning).

``all`` replays a page at a time (at most :data:`DEAD_LETTERS_PAGE_MAX` letters, fewer past
:data:`PAGE_BYTES`), after a cursor, answering the cursor to continue with, like a SCAN: one call
over every letter took over 10 s with tens of thousands of them (found by fuzzing). The SDK and
``graflow dead-letters replay --all`` follow the cursor to the end.

Cells (docs/architecture.md, "Redis Cluster: cells"): each cell has its own dead-letter stream
(``keys.dead_letters_stream(cell)``: a letter goes to the cell of the entry or outcome it holds).
With one cell a dead letter's id is its entry id, as it always was; with several it is
``<cell>-<entry id>`` (:func:`letter_id`), and ids, ``after_id`` and ``next_after_id`` are
these. Listing and replaying with ``all`` walk the cells in order, each oldest first, so following
the cursor returns every letter once. A replay appends the letter to its queue's lane in the
letter's cell (one script per cell, with that cell's dead letters and lanes: one slot).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog
from google.protobuf.message import DecodeError

from graflow_api.v1 import messages_pb2
from graflow_runtime import keys
from graflow_runtime.errors import FailedPrecondition, InvalidRequest, NotFound
from graflow_runtime.limits import DEAD_LETTERS_PAGE_MAX
from graflow_runtime.names import queue_name_problem
from graflow_runtime.queues import QueueGroups
from graflow_runtime.scripts import LuaScript, ScriptCall
from graflow_runtime.signing import KEY_ID_FIELD, SIGNATURE_FIELD, UNSIGNED, BusKeys, Kind
from graflow_runtime.streams import DEAD_LETTER_FIELD, STREAM_ID_RULE, is_stream_id, stream_id

log = structlog.get_logger(__name__)

DEFAULT_PAGE = 100
# Bytes of dead letters in one ListDeadLetters page (a quarter of the 64 MiB message limit): a page
# ends before the letter that would take it past this, so that large letters (a node's arguments
# may be 1 MiB) cannot make every page too large to send. The first letter is always sent.
PAGE_BYTES = 16 * 1024 * 1024
# The largest entry id there can be.
_LAST_ID = (2**64 - 1, 2**64 - 1)
_REPLAY = LuaScript.load(__package__, "replay_dead_letters.lua")



def make_dead_letter(*, queue: str, original_id: str, raw: bytes, reason: str) -> messages_pb2.DeadLetter:
    """A dead letter for ``raw`` read from ``queue``, with the envelope's identity when decodable."""
    letter = messages_pb2.DeadLetter(
        queue=queue, original_id=original_id, reason=reason, raw=raw, dead_at_ms=int(time.time() * 1000)
    )
    try:
        env = messages_pb2.TaskEnvelope.FromString(raw)
    except DecodeError:
        return letter
    letter.run_id, letter.node_id, letter.attempt = env.run_id, env.node_id, env.attempt
    return letter


def letter_id(cell: int, entry_id: str) -> str:
    """The id of the dead letter at ``entry_id`` in ``cell``'s stream: the entry id itself with one
    cell, ``<cell>-<entry id>`` with several."""
    return entry_id if len(keys.cells()) == 1 else f"{cell}-{entry_id}"


def parse_letter_id(value: str, field: str) -> tuple[int, str]:
    """(cell, entry id) of a dead letter id (:func:`letter_id`); InvalidRequest naming ``field``
    when it is not one."""
    cells = len(keys.cells())
    if cells == 1:
        cell_text, entry_id = "0", value
        rule = STREAM_ID_RULE
    else:
        cell_text, _, entry_id = value.partition("-")
        rule = f"expected '<cell>-<entry id>' with a cell below {cells}, e.g. '1-1700000000000-0'"
    valid_cell = cell_text.isascii() and cell_text.isdigit() and int(cell_text) < cells
    if not (valid_cell and is_stream_id(entry_id)):
        raise InvalidRequest(f"{field}: {value[:64]!r} is not a dead letter id ({rule})")
    return int(cell_text), entry_id


def decode_entry(entry_id: bytes | str, fields: dict[bytes, bytes], cell: int = 0) -> messages_pb2.DeadLetter:
    entry = letter_id(cell, entry_id.decode() if isinstance(entry_id, bytes) else entry_id)
    data = fields.get(DEAD_LETTER_FIELD, b"")
    try:
        letter = messages_pb2.DeadLetter.FromString(data)
    except DecodeError as exc:
        return messages_pb2.DeadLetter(id=entry, reason=f"undecodable dead letter entry: {exc}", raw=data)
    letter.id = entry
    return letter


def _parse_ids(ids: Sequence[str]) -> list[tuple[int, str]]:
    """(cell, entry id) of every id (at most :data:`DEAD_LETTERS_PAGE_MAX` of them), duplicates
    left out."""
    if len(ids) > DEAD_LETTERS_PAGE_MAX:
        raise InvalidRequest(
            f"ids: {len(ids)} ids; at most {DEAD_LETTERS_PAGE_MAX} dead letters by id in one request"
        )
    return list(dict.fromkeys(parse_letter_id(value, f"ids[{index}]") for index, value in enumerate(ids)))


# A dead letter as read, with its entry's fields (the signature of its message, when it had one).
Letter = tuple[messages_pb2.DeadLetter, dict[bytes, bytes]]


@dataclass(frozen=True)
class Replayed:
    """What a replay did; with ``all``, where the next page starts ("" = the end was reached)."""

    replayed: int
    next_after_id: str = ""
    left_in_place: int = 0


class DeadLetters:
    def __init__(self, redis: aioredis.Redis, groups: QueueGroups, *, bus_keys: BusKeys = UNSIGNED) -> None:
        self._redis = redis
        self._groups = groups
        self._keys = bus_keys

    async def get(self, ids: Sequence[str]) -> list[messages_pb2.DeadLetter]:
        """The dead letters with these ids, in the order asked (unknown ids are left out)."""
        located = _parse_ids(ids)
        found = await self._read(located)
        return [
            decode_entry(*entries[0], cell)
            for (cell, _), entries in zip(located, found, strict=True)
            if entries
        ]

    async def _read(self, located: list[tuple[int, str]]) -> list[list[tuple[bytes, dict[bytes, bytes]]]]:
        """The entry (a list of at most one) at each (cell, entry id), in one pipeline."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for cell, entry_id in located:
                pipe.xrange(keys.dead_letters_stream(cell), min=entry_id, max=entry_id, count=1)
            return list(await pipe.execute())

    async def list(self, *, limit: int = 0, after_id: str = "") -> list[messages_pb2.DeadLetter]:
        """Oldest first, starting after ``after_id`` (exclusive): ``limit`` letters, fewer when
        they would pass :data:`PAGE_BYTES` (a short page is not the end: the end is an empty one)."""
        page, _ = await self._page(min(limit or DEFAULT_PAGE, DEAD_LETTERS_PAGE_MAX), after_id)
        return [letter for letter, _ in page]

    async def delete(self, ids: Sequence[str]) -> tuple[int, int]:
        """Remove dead letters for good: (deleted, not found). One XDEL per cell, pipelined; an id
        that is not there (deleted or replayed meanwhile) is counted, not an error, so a repeat of
        the call is harmless."""
        by_cell: dict[int, list[str]] = {}
        for cell, entry_id in _parse_ids(ids):
            by_cell.setdefault(cell, []).append(entry_id)
        if not by_cell:
            return 0, 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for cell, entry_ids in by_cell.items():
                pipe.xdel(keys.dead_letters_stream(cell), *entry_ids)
            counts = await pipe.execute()
        deleted = sum(counts)
        wanted = sum(len(entry_ids) for entry_ids in by_cell.values())
        log.info("dead letters deleted", deleted=deleted, not_found=wanted - deleted, ids=list(ids)[:10])
        return deleted, wanted - deleted

    async def replay(
        self, *, ids: Sequence[str] = (), replay_all: bool = False, after_id: str = ""
    ) -> Replayed:
        """Replay ``ids`` (all or nothing), or with ``replay_all`` the page after ``after_id``."""
        if ids:
            return Replayed(replayed=await self._replay_ids(_parse_ids(ids)))
        if replay_all:
            return await self._replay_page(after_id)
        raise InvalidRequest("name the dead letters to replay in 'ids', or set 'all' to replay every one")

    async def _page(self, count: int, after_id: str) -> tuple[list[Letter], bool]:
        """Up to ``count`` letters after ``after_id`` (checked), cell after cell, fewer when they
        would pass :data:`PAGE_BYTES`; and whether the end of the dead letters was reached."""
        first, after = parse_letter_id(after_id, "after_id") if after_id else (0, "")
        page: list[Letter] = []
        size = 0
        for cell in range(first, len(keys.cells())):  # the cursor's cell, then the next ones
            if after and stream_id(after) == _LAST_ID:
                after = ""  # nothing comes after it, and Redis refuses an exclusive start there
                continue
            start = f"({after}" if after else "-"
            after = ""
            want = count - len(page)
            entries = await self._redis.xrange(keys.dead_letters_stream(cell), min=start, max="+", count=want)
            for entry_id, fields in entries:
                letter = decode_entry(entry_id, fields, cell)
                size += letter.ByteSize() + 6  # and its tag and length in the response
                if page and size > PAGE_BYTES:
                    return page, False
                page.append((letter, fields))
            if len(entries) >= want:
                return page, False
        return page, True

    async def _replay_ids(self, located: list[tuple[int, str]]) -> int:
        found = await self._read(located)
        missing = [letter_id(cell, entry_id)
                   for (cell, entry_id), entries in zip(located, found, strict=True) if not entries]
        if missing:
            raise NotFound(
                f"no dead letters with ids {', '.join(missing)} (already replayed or never existed); "
                "nothing was replayed. List them with ListDeadLetters"
            )
        letters = [(decode_entry(*entries[0], cell), entries[0][1])
                   for (cell, _), entries in zip(located, found, strict=True)]
        unreplayable = [
            f"{letter.id} ({problem})"
            for letter, fields in letters
            if (problem := self._problem(letter, fields))
        ]
        if unreplayable:
            raise FailedPrecondition(
                f"cannot replay dead letters {', '.join(unreplayable)}; nothing was replayed"
            )
        return await self._replay_letters(letters)

    async def _replay_page(self, after_id: str) -> Replayed:
        """Replay a page after ``after_id``, bounded like :meth:`list` so that no call does work
        proportional to every dead letter there is; letters that cannot be replayed stay in place
        (one warning names the first of them) and the cursor passes them."""
        page, at_end = await self._page(DEAD_LETTERS_PAGE_MAX, after_id)
        replayable: list[Letter] = []
        left: list[tuple[str, str]] = []
        for letter, fields in page:
            problem = self._problem(letter, fields)
            if problem:
                left.append((letter.id, problem))
            else:
                replayable.append((letter, fields))
        if left:
            log.warning(
                "dead letters left in place: cannot replay them",
                left_in_place=len(left),
                dead_letter_ids=[entry_id for entry_id, _ in left[:10]],
                first_problem=left[0][1],
            )
        return Replayed(
            replayed=await self._replay_letters(replayable),
            next_after_id="" if at_end else page[-1][0].id,
            left_in_place=len(left),
        )

    def _problem(self, letter: messages_pb2.DeadLetter, fields: dict[bytes, bytes]) -> str | None:
        """Why ``letter`` cannot be replayed, if it cannot: its own shape, then its signature."""
        return _replay_problem(letter) or self._keys.fields_problem(Kind.ENVELOPE, letter.raw, fields)

    async def _replay_letters(self, letters: list[Letter]) -> int:
        if not letters:
            return 0
        await self._groups.ensure({letter.queue for letter, _ in letters})
        by_cell: dict[int, list[Letter]] = {}
        for letter, fields in letters:
            by_cell.setdefault(parse_letter_id(letter.id, "id")[0], []).append((letter, fields))
        calls: list[ScriptCall] = []
        for cell, cell_letters in by_cell.items():
            streams: list[str] = []
            args: list[bytes | str] = []
            for letter, fields in cell_letters:
                streams.append(_replay_stream(letter, cell))
                entry_id = parse_letter_id(letter.id, "id")[1]
                signature = [fields.get(KEY_ID_FIELD, b""), fields.get(SIGNATURE_FIELD, b"")]
                args += [entry_id, letter.raw, *signature]
            calls.append(([keys.dead_letters_stream(cell), *streams], args))
        replayed = sum(int(reply) for reply in await _REPLAY.run_many(self._redis, calls))
        log.info(
            "dead letters replayed",
            replayed=replayed,
            requested=len(letters),
            dead_letter_ids=[letter.id for letter, _ in letters[:100]],
        )
        return replayed


def _replay_stream(letter: messages_pb2.DeadLetter, cell: int) -> str:
    """The lane a replay appends to, in the letter's cell: the high lane for an envelope of
    priority > 0, else the normal lane (a replayed attempt does not replace one lost with its
    worker, even if the letter came from the high lane)."""
    try:
        high = messages_pb2.TaskEnvelope.FromString(letter.raw).priority > 0
    except DecodeError:
        high = False
    return keys.queue_high_stream(letter.queue, cell) if high else keys.queue_stream(letter.queue, cell)


def _replay_problem(letter: messages_pb2.DeadLetter) -> str | None:
    if letter.reason.startswith("undecodable dead letter entry") and not letter.queue:
        return "the entry itself is undecodable"
    problem = queue_name_problem(letter.queue)
    if problem:
        return f"its queue is unusable: {problem}"
    if not letter.raw:
        return "it holds no message bytes"
    cell = parse_letter_id(letter.id, "id")[0]
    if letter.run_id and keys.cell_of(letter.run_id) != cell:
        return f"its run belongs to cell {keys.cell_of(letter.run_id)}, not to the letter's cell {cell}"
    return None
