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
from graflow_runtime.scripts import LuaScript
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


def decode_entry(entry_id: bytes | str, fields: dict[bytes, bytes]) -> messages_pb2.DeadLetter:
    entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    data = fields.get(DEAD_LETTER_FIELD, b"")
    try:
        letter = messages_pb2.DeadLetter.FromString(data)
    except DecodeError as exc:
        return messages_pb2.DeadLetter(id=entry, reason=f"undecodable dead letter entry: {exc}", raw=data)
    letter.id = entry
    return letter


def _check_ids(ids: Sequence[str]) -> None:
    """Every id a stream id, and at most :data:`DEAD_LETTERS_PAGE_MAX` of them."""
    if len(ids) > DEAD_LETTERS_PAGE_MAX:
        raise InvalidRequest(
            f"ids: {len(ids)} ids; at most {DEAD_LETTERS_PAGE_MAX} dead letters by id in one request"
        )
    for index, entry_id in enumerate(ids):
        _check_stream_id(entry_id, f"ids[{index}]")


def _check_stream_id(value: str, field: str) -> None:
    if not is_stream_id(value):
        raise InvalidRequest(f"{field}: {value[:64]!r} is not a dead letter id ({STREAM_ID_RULE})")


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
        _check_ids(ids)
        ids = list(dict.fromkeys(ids))
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xrange(keys.DEAD_LETTERS_STREAM, min=entry_id, max=entry_id, count=1)
            found = await pipe.execute()
        return [decode_entry(*entries[0]) for entries in found if entries]

    async def list(self, *, limit: int = 0, after_id: str = "") -> list[messages_pb2.DeadLetter]:
        """Oldest first, starting after ``after_id`` (exclusive): ``limit`` letters, fewer when
        they would pass :data:`PAGE_BYTES` (a short page is not the end: the end is an empty one)."""
        page, _ = await self._page(min(limit or DEFAULT_PAGE, DEAD_LETTERS_PAGE_MAX), after_id)
        return [letter for letter, _ in page]

    async def replay(
        self, *, ids: Sequence[str] = (), replay_all: bool = False, after_id: str = ""
    ) -> Replayed:
        """Replay ``ids`` (all or nothing), or with ``replay_all`` the page after ``after_id``."""
        if ids:
            _check_ids(ids)
            return Replayed(replayed=await self._replay_ids(list(dict.fromkeys(ids))))
        if replay_all:
            return await self._replay_page(after_id)
        raise InvalidRequest("name the dead letters to replay in 'ids', or set 'all' to replay every one")

    async def _page(self, count: int, after_id: str) -> tuple[list[Letter], bool]:
        """Up to ``count`` letters after ``after_id`` (checked), fewer when they would pass
        :data:`PAGE_BYTES`; and whether the end of the dead letters was reached."""
        if after_id:
            _check_stream_id(after_id, "after_id")
            if stream_id(after_id) == _LAST_ID:
                return [], True  # nothing comes after it, and Redis refuses an exclusive start there
        start = f"({after_id}" if after_id else "-"
        entries = await self._redis.xrange(keys.DEAD_LETTERS_STREAM, min=start, max="+", count=count)
        page: list[Letter] = []
        size = 0
        for entry_id, fields in entries:
            letter = decode_entry(entry_id, fields)
            size += letter.ByteSize() + 6  # and its tag and length in the response
            if page and size > PAGE_BYTES:
                return page, False
            page.append((letter, fields))
        return page, len(entries) < count

    async def _replay_ids(self, ids: list[str]) -> int:
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xrange(keys.DEAD_LETTERS_STREAM, min=entry_id, max=entry_id, count=1)
            found = await pipe.execute()
        missing = [entry_id for entry_id, entries in zip(ids, found, strict=True) if not entries]
        if missing:
            raise NotFound(
                f"no dead letters with ids {', '.join(missing)} (already replayed or never existed); "
                "nothing was replayed. List them with ListDeadLetters"
            )
        letters = [(decode_entry(*entries[0]), entries[0][1]) for entries in found]
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
        streams: list[str] = []
        args: list[bytes | str] = []
        for letter, fields in letters:
            streams.append(_replay_stream(letter))
            args += [letter.id, letter.raw, fields.get(KEY_ID_FIELD, b""), fields.get(SIGNATURE_FIELD, b"")]
        replayed = int(await _REPLAY.run(self._redis, [keys.DEAD_LETTERS_STREAM, *streams], args))
        log.info(
            "dead letters replayed",
            replayed=replayed,
            requested=len(letters),
            dead_letter_ids=[letter.id for letter, _ in letters[:100]],
        )
        return replayed


def _replay_stream(letter: messages_pb2.DeadLetter) -> str:
    """The lane a replay appends to: the high lane for an envelope of priority > 0, else the normal
    lane (a replayed attempt does not replace one lost with its worker, even if the letter came
    from the high lane)."""
    try:
        high = messages_pb2.TaskEnvelope.FromString(letter.raw).priority > 0
    except DecodeError:
        high = False
    return keys.queue_high_stream(letter.queue) if high else keys.queue_stream(letter.queue)


def _replay_problem(letter: messages_pb2.DeadLetter) -> str | None:
    if letter.reason.startswith("undecodable dead letter entry") and not letter.queue:
        return "the entry itself is undecodable"
    problem = queue_name_problem(letter.queue)
    if problem:
        return f"its queue is unusable: {problem}"
    if not letter.raw:
        return "it holds no message bytes"
    return None
