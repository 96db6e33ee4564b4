"""Reading deliveries from the queue streams and running them (architecture step 3).

A :class:`Consumer` reads the lanes of one cell of the key layout (docs/architecture.md, "Redis
Cluster: cells"): the worker runs one per cell, each with its own reader connection and its own
position in the cell's ended-runs stream, all sharing the worker's intake (free slots), runner and
committer. With one cell (the default layout) there is one consumer and every read is as described
below; with several, each cell's loop reads while slots are free, so the deliveries held can pass
the worker's concurrency by what the loops read at the same moment: at most ``cells x free slots``
(``x lanes`` for blocking reads, see below), run as slots free up. An envelope read from a cell it
does not belong to (its run's cell, ``keys.cell_of``) is dead-lettered: its outcome could not be
applied with its run in one slot.

The read loop first resumes this consumer's own pending entries (id ``0``: work it held before a
restart with the same worker id), then reads new ones, only while slots are free and the intake is
not paused. Each queue has two lanes (docs/architecture.md, "Priority lanes"); the streams are read
in one order, the high lanes of every queue first, then the normal lanes, and each read is one
round trip:

- after a read that filled every free slot (entries are likely waiting), ``read_lanes.lua`` takes
  up to ``<free slots>`` entries, lane after lane, without blocking: never more than the free slots;
- otherwise (the lanes were drained), ``XREADGROUP GROUP workers <worker_id> COUNT <free slots>
  BLOCK <read_block_ms> STREAMS <lanes> >`` waits for the next entry. Redis applies COUNT per
  stream, so when entries reached several lanes between two reads this read can take up to
  ``<free slots>`` from each: a bounded prefetch (at most the free slots per extra lane, so 2x with
  one queue), held pending by this worker and run as slots free up (the intake waits until the
  worker is back under its capacity before reading again).

It blocks on Redis or on the intake, never polls. Pausing or stopping unblocks a read in progress
with ``CLIENT UNBLOCK`` (the read returns nothing, so no entry is taken and then lost).

Redis can serve a read (the entries enter this consumer's pending list, persisted with AOF) whose
reply never arrives: the connection drops, or Redis restarts, right after. Nobody else would ever
run those entries (the coordinator reclaims only from dead workers), so after a failed read and
every ``RESYNC_INTERVAL_S`` the loop compares the consumer's pending list with the deliveries it
holds and takes up the ones it does not hold (:meth:`Consumer._resync`).

For each read batch: every entry's signature is checked before its envelope is decoded (with signing
keys, an unsigned or badly signed entry is never run: it goes to dead letters with the reason
``BadSignature``, acknowledged, and is counted; graflow_runtime.signing); undecodable entries go to
dead letters (``XADD`` to the cell's dead letters + ``XACK`` in one ``MULTI``), the upstream results are
fetched with one ``GetResults`` per run in the batch, for the deliveries whose parameters can bind
one (:meth:`Runner.needs_upstream`: a task whose parameters are all bound arguments, or that has
none, gets no upstream results and needs no call), and each envelope runs in its own asyncio task;
finished attempts go to the committer.

Invariant 11 (a run that has ended starts no more work): concurrently with the upstream fetch, one
pipelined ``HGET gf:run:{R} ended`` per run of the batch that the registry of ended runs
(:mod:`graflow_worker.cancellation`) does not know yet tells which runs have ended; they join the
registry, and the runner then starts none of their deliveries: each is committed as a
``STATUS_CANCELED`` outcome (error ``RunEnded``) with its acknowledgement, like any outcome, so it
is neither lost nor dead-lettered. When that check fails (Redis unreachable) the batch is given
up: its entries stay pending and the periodic resync (``RESYNC_INTERVAL_S``) takes them up again.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import redis.asyncio as aioredis
import structlog
from google.protobuf.message import DecodeError
from redis.exceptions import NoScriptError, ResponseError

from graflow_api.v1 import messages_pb2
from graflow_api.v1 import result_store_pb2 as rs_pb2
from graflow_api.v1 import result_store_pb2_grpc as rs_grpc
from graflow_runtime import keys, metrics, telemetry
from graflow_runtime.backoff import Backoff
from graflow_runtime.grpc_client import Downstream, DownstreamUnavailable
from graflow_runtime.grpc_options import MAX_MESSAGE_BYTES
from graflow_runtime.redis_client import REDIS_ERRORS
from graflow_runtime.scripts import LuaScript
from graflow_runtime.signing import KEY_ID_FIELD, SIGNATURE_FIELD, UNSIGNED, BusKeys, Kind
from graflow_runtime.streams import add_dead_letter

from graflow_worker.committer import Committer, Finished
from graflow_worker.intake import Intake, sleep_unless
from graflow_worker.run_endings import READ_COUNT, RunEndings
from graflow_worker.runner import Execution, Runner, failure, now_ms

log = structlog.get_logger(__name__)

PAUSE_FETCH = "result-store unavailable for upstream results"
# How often the pending list is checked for deliveries whose read reply was lost.
RESYNC_INTERVAL_S = 5.0
# A non-blocking read of the lanes in order, up to the free slots (its file says how).
_READ_LANES = LuaScript.load(__package__, "read_lanes.lua")


@dataclass
class Delivery:
    stream: str
    entry_id: bytes
    envelope: messages_pb2.TaskEnvelope
    # The ended-runs stream's last id when the coordinator enqueued it (keys.ENDED_CURSOR_FIELD).
    ended_cursor: bytes | None = None
    cell: int = 0


class _GaveUp(Exception):
    """The worker is stopping while waiting for the result-store; the entries stay pending."""


def _entries(response: Any) -> list[tuple[str, bytes, Any]]:
    entries = []
    for stream, items in response or ():
        name = stream.decode() if isinstance(stream, bytes) else stream
        entries.extend((name, entry_id, fields) for entry_id, fields in items)
    return entries


def _script_entries(reply: Any) -> list[tuple[str, bytes, Any]]:
    """``read_lanes.lua``'s reply (XREADGROUP's shape, fields as flat lists) as :func:`_entries`."""
    entries = []
    for stream, items in reply or ():
        name = stream.decode() if isinstance(stream, bytes) else stream
        for entry_id, flat in items:
            entries.append((name, entry_id, dict(zip(flat[::2], flat[1::2], strict=True))))
    return entries


def decode_entry(
    fields: dict[bytes, bytes] | None, bus_keys: BusKeys = UNSIGNED
) -> tuple[messages_pb2.TaskEnvelope | None, bytes, str]:
    """(envelope, raw bytes, reason it is unusable or ""). The signature is checked first: nothing
    of a badly signed entry is decoded."""
    if not fields or keys.ENVELOPE_FIELD not in fields:
        return None, b"", (
            "undecodable envelope: the entry has no field 'e' (deleted, or not written by the coordinator)"
        )
    raw = fields[keys.ENVELOPE_FIELD]
    bad_signature = bus_keys.fields_problem(Kind.ENVELOPE, raw, fields)
    if bad_signature:
        return None, raw, bad_signature
    try:
        envelope = messages_pb2.TaskEnvelope.FromString(raw)
    except DecodeError as exc:
        return None, raw, f"undecodable envelope: {exc}"
    missing = [name for name in ("run_id", "node_id", "task_type") if not getattr(envelope, name)]
    if missing:
        return envelope, raw, f"undecodable envelope: missing {', '.join(missing)}"
    if envelope.attempt < 1:
        return envelope, raw, "undecodable envelope: attempt must be >= 1"
    return envelope, raw, ""


class Consumer:
    """The reader of one cell's lanes (``endings`` follows that cell's ended-runs stream). Its
    blocking reads hold ``reader``; ``control`` sends the ``CLIENT UNBLOCK`` that interrupts them
    (it must reach the Redis node ``reader`` is connected to)."""

    def __init__(self, *, redis: aioredis.Redis, reader: aioredis.Redis, worker_id: str, queues: list[str],
                 intake: Intake, runner: Runner, committer: Committer, result_store: Downstream,
                 stub: rs_grpc.ResultStoreStub, read_block_ms: int, endings: RunEndings,
                 bus_keys: BusKeys = UNSIGNED, cell: int = 0, control: aioredis.Redis | None = None) -> None:
        self._redis = redis
        self._control = control or redis
        self._keys = bus_keys
        self._endings = endings
        self._reader = reader
        self.worker_id = worker_id
        self.cell = cell
        # Every lane of every queue in the cell, in reading order: the high lanes first.
        self._queue_of = {
            **{keys.queue_high_stream(q, cell): q for q in queues},
            **{keys.queue_stream(q, cell): q for q in queues},
        }
        # The last read filled every free slot: the next one takes without blocking.
        self._backlog = True
        self._intake = intake
        self._runner = runner
        self._committer = committer
        self._downstream = result_store
        self._stub = stub
        self._block_ms = read_block_ms
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()
        self._reader_id: int | None = None
        self._blocking = False
        # Deliveries read and not yet committed (reported as in_flight in heartbeats), and their
        # (stream, entry id).
        self.held = 0
        self._held_ids: set[tuple[str, bytes]] = set()
        self._drained = asyncio.Event()
        self._drained.set()

    # ---- set-up and control ----
    async def ensure_groups(self) -> None:
        await _READ_LANES.load_into(self._redis)
        for stream in self._queue_of:
            try:
                await self._redis.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def unblock(self) -> None:
        """Make a blocking read in progress return at once (with nothing)."""
        if self._blocking and self._reader_id is not None:
            self._spawn(self._send_unblock(self._reader_id))

    async def _send_unblock(self, client_id: int) -> None:
        try:
            await self._control.client_unblock(client_id)
        except REDIS_ERRORS as exc:
            log.debug("could not unblock the reader", error=str(exc))

    def stop(self) -> None:
        self._stop.set()
        self._intake.stop()

    async def wait_drained(self) -> None:
        await self._drained.wait()

    async def cancel_work(self) -> None:
        """Cancel what still runs (shutdown grace elapsed); those entries stay pending."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- reading ----
    async def run(self) -> None:
        """Resume own pending entries, then read new ones until stopped."""
        backoff = Backoff(cap=2.0)
        streams = list(self._queue_of)
        cursors = {stream: b"0" for stream in streams}
        while cursors and not self._stop.is_set():
            if not await self._intake.wait_ready():
                return
            stream = next(iter(cursors))
            try:
                entries = await self._read_own(stream, cursors[stream])
            except REDIS_ERRORS as exc:
                await self._read_failed(exc, backoff)
                continue
            if not entries:
                del cursors[stream]
                continue
            cursors[stream] = entries[-1][1]
            log.info("resuming own pending entries", stream=stream, count=len(entries))
            self._accept(entries)
        new = {stream: ">" for stream in streams}
        loop = asyncio.get_running_loop()
        next_resync = loop.time() + RESYNC_INTERVAL_S
        while await self._intake.wait_ready():
            if loop.time() >= next_resync:
                await self._resync()
                next_resync = loop.time() + RESYNC_INTERVAL_S
                continue
            try:
                entries, fresh = await self._read_with_endings(new)
            except REDIS_ERRORS as exc:
                await self._read_failed(exc, backoff)
                next_resync = 0.0  # the failed read may have been served, its reply lost
                continue
            backoff.reset()
            if entries:
                self._accept(entries, fresh=fresh)

    async def _resync(self) -> None:
        """Take up the entries pending for this consumer that it does not hold (a read was served
        and its reply lost). Runs between reads, so no read in flight can add entries meanwhile;
        the held ids are taken before asking Redis, so a delivery committed during the call is not
        mistaken for a lost one."""
        for stream in self._queue_of:
            held = {entry_id for s, entry_id in self._held_ids if s == stream}
            try:
                rows = await self._redis.xpending_range(
                    stream, keys.WORKER_GROUP, "-", "+", len(held) + 100, consumername=self.worker_id
                )
                lost = [row["message_id"] for row in rows if row["message_id"] not in held]
                if not lost:
                    continue
                pipe = self._redis.pipeline(transaction=False)
                for entry_id in lost:
                    pipe.xrange(stream, min=entry_id, max=entry_id, count=1)
                found = await pipe.execute()
            except REDIS_ERRORS as exc:
                log.warning("could not check this worker's pending deliveries", error=str(exc))
                return
            if self._stop.is_set():
                return
            log.warning("taking up deliveries pending for this worker that it never received "
                        "(a read was served and its reply lost)", stream=stream, count=len(lost))
            # A deleted entry comes back without fields and is dead-lettered as undecodable.
            self._accept([(stream, entry_id, items[0][1] if items else None)
                          for entry_id, items in zip(lost, found, strict=True)])

    async def _read_own(self, stream: str, after: bytes) -> list[tuple[str, bytes, Any]]:
        """This consumer's own pending entries of ``stream`` after ``after`` (no blocking)."""
        response = await self._reader.xreadgroup(
            keys.WORKER_GROUP, self.worker_id, {stream: after}, count=self._intake.free
        )
        return _entries(response)

    async def _read_with_endings(self, streams: dict[str, Any]) -> tuple[list[tuple[str, bytes, Any]], bool]:
        """A read of the lanes (taking, or blocking: see the module's docstring) and, in the same
        round trip (run right after it by Redis), the runs that ended since the ended-runs stream
        was last read. ``fresh``: every end up to the moment the entries were read is in the
        registry (so a delivery whose ended cursor :meth:`RunEndings.covers` needs no check in
        Redis)."""
        last_id = self._endings.last_id
        count, take = self._intake.free, self._backlog
        if not take and self._reader_id is None:
            self._reader_id = await self._reader.client_id()
        self._blocking = not take
        try:
            async with self._reader.pipeline(transaction=False) as pipe:
                if take:
                    pipe.evalsha(_READ_LANES.sha, len(streams), *streams, keys.WORKER_GROUP,
                                 self.worker_id, count)
                else:
                    pipe.xreadgroup(keys.WORKER_GROUP, self.worker_id, streams, count=count,
                                    block=self._block_ms)
                if last_id is not None:
                    pipe.xread({self._endings.stream: last_id}, count=READ_COUNT)
                replies = await pipe.execute()
        finally:
            self._blocking = False
        entries = _script_entries(replies[0]) if take else _entries(replies[0])
        self._backlog = len(entries) >= count
        if last_id is None:
            return entries, False
        return entries, self._endings.absorb(replies[1]) < READ_COUNT

    async def _read_failed(self, exc: BaseException, backoff: Backoff) -> None:
        self._reader_id = None
        if isinstance(exc, NoScriptError):  # Redis restarted or its scripts were flushed
            log.warning("the lane read script is missing in Redis; loading it again")
            try:
                await _READ_LANES.load_into(self._redis)
                return
            except REDIS_ERRORS as again:
                exc = again
        if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
            log.warning("consumer group missing; creating it again", error=str(exc))
            try:
                await self.ensure_groups()
                return
            except REDIS_ERRORS as again:
                exc = again
        delay = backoff.next_delay()
        log.warning("reading the queues failed; retrying", error=str(exc), retry_in_s=round(delay, 3))
        await sleep_unless(self._stop, delay)

    def _accept(self, entries: list[tuple[str, bytes, Any]], *, fresh: bool = False) -> None:
        self._intake.take(len(entries))
        self.held += len(entries)
        self._held_ids.update((stream, entry_id) for stream, entry_id, _fields in entries)
        self._drained.clear()
        self._spawn(self._handle_batch(entries, fresh))

    def _finish(self, stream: str, entry_id: bytes) -> None:
        """The delivery is acknowledged, or given up (it stays pending for a reclaim or restart)."""
        self._held_ids.discard((stream, entry_id))
        self._release()

    def _release(self, count: int = 1) -> None:
        self._intake.give(count)
        self.held -= count
        if self.held <= 0:
            self._drained.set()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- handling a batch ----
    async def _handle_batch(self, entries: list[tuple[str, bytes, Any]], fresh: bool) -> None:
        deliveries: list[Delivery] = []
        for stream, entry_id, fields in entries:
            envelope, raw, reason = decode_entry(fields, self._keys)
            if envelope is not None and not reason and keys.cell_of(envelope.run_id) != self.cell:
                reason = (f"envelope in the wrong cell: run {envelope.run_id!r} belongs to cell "
                          f"{keys.cell_of(envelope.run_id)}, read from cell {self.cell}")
            if reason:
                await self._dead_letter(stream, entry_id, raw, reason, envelope, fields or {})
            else:
                assert envelope is not None
                deliveries.append(Delivery(stream, entry_id, envelope,
                                           fields.get(keys.ENDED_CURSOR_FIELD) if fresh else None, self.cell))
        if not deliveries:
            return
        fetching = [d for d in deliveries if self._runner.needs_upstream(d.envelope)]
        try:
            if fetching:
                upstream, checked = await asyncio.gather(
                    self._fetch_upstream(fetching), self._check_ended(deliveries), return_exceptions=True)
                for outcome in (upstream, checked):
                    if isinstance(outcome, BaseException):
                        raise outcome
            else:  # nothing to fetch: no tasks to spawn for the check alone
                await self._check_ended(deliveries)
                upstream = {}
        except (_GaveUp, *REDIS_ERRORS) as exc:
            if not isinstance(exc, _GaveUp):
                log.warning("could not check whether the runs of a read batch have ended; the "
                            "deliveries stay pending and are taken up again", error=str(exc),
                            deliveries=len(deliveries))
            for delivery in deliveries:
                self._finish(delivery.stream, delivery.entry_id)
            return
        except asyncio.CancelledError:
            for delivery in deliveries:
                self._finish(delivery.stream, delivery.entry_id)
            raise
        for delivery in deliveries:
            self._spawn(self._execute(delivery, upstream.get(id(delivery), {})))

    async def _check_ended(self, deliveries: Iterable[Delivery]) -> set[str]:
        """The runs of ``deliveries`` that have ended; they are added to the registry, so that the
        runner starts none of their deliveries. A run the registry does not know as ended is asked
        of Redis (its meta, one pipelined round trip for all such runs), unless every delivery of
        it was enqueued while the run was live at an end this worker has read from since
        (:meth:`RunEndings.covers`: the registry then knows it too)."""
        deliveries = list(deliveries)
        registry = self._runner.cancellations
        runs = {d.envelope.run_id for d in deliveries}
        ended = {run for run in runs if registry.is_canceled(run)}
        uncovered = {d.envelope.run_id for d in deliveries if not self._endings.covers(d.ended_cursor)}
        unknown = sorted((runs - ended) & uncovered)
        if not unknown:
            return ended
        if len(unknown) == 1:  # the common case: a plain command costs less than a pipeline
            values = [await self._redis.hget(keys.run_meta(unknown[0]), keys.RUN_ENDED_AT_FIELD)]
        else:
            async with self._redis.pipeline(transaction=False) as pipe:
                for run in unknown:
                    pipe.hget(keys.run_meta(run), keys.RUN_ENDED_AT_FIELD)
                values = await pipe.execute()
        # 'ended' is "0" while the run is live, the end's ms once it ended.
        found = [run for run, value in zip(unknown, values, strict=True) if value and int(value) > 0]
        if found:
            registry.cancel(found)
        return ended | set(found)

    async def _execute(self, delivery: Delivery, run_results: dict[str, Any] | BaseException) -> None:
        envelope = delivery.envelope
        try:
            if isinstance(run_results, BaseException) and self._runner.cancellations.is_canceled(
                    envelope.run_id):
                run_results = {}  # not started anyway (the runner skips it)
            if isinstance(run_results, BaseException):
                execution = self._fetch_failed(envelope, run_results)
            else:
                found = [run_results[n] for n in envelope.input_node_ids if n in run_results]
                execution = await self._runner.run(
                    envelope, {r.node_id: r.value for r in found}, {r.node_id: r.task_type for r in found})
        except asyncio.CancelledError:
            self._finish(delivery.stream, delivery.entry_id)
            raise
        except Exception as exc:  # noqa: BLE001 - a bug of the worker must not strand the delivery
            log.exception("running a delivery failed inside the worker", run_id=envelope.run_id,
                          node_id=envelope.node_id)
            execution = self._failed(envelope, "WorkerError", f"the worker failed to run the task: {exc!r}")
        done = functools.partial(self._finish, delivery.stream, delivery.entry_id)
        self._committer.submit(Finished(delivery.stream, delivery.entry_id, execution, done, delivery.cell))

    def _fetch_failed(self, envelope: messages_pb2.TaskEnvelope, exc: BaseException) -> Execution:
        if _too_large(exc):
            return self._failed(
                envelope, "UpstreamTooLarge",
                f"the upstream results of node {envelope.node_id!r} (nodes "
                f"{', '.join(map(repr, envelope.input_node_ids))}) together exceed the message limit of "
                f"{MAX_MESSAGE_BYTES} bytes (MAX_MESSAGE_BYTES): pass large data by reference",
                retryable=False)
        detail = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
        return self._failed(envelope, "UpstreamFetchFailed",
                            f"could not read the upstream results of node {envelope.node_id!r}: {detail}")

    def _failed(self, envelope: messages_pb2.TaskEnvelope, error_type: str, message: str, *,
                retryable: bool = True) -> Execution:
        started = now_ms()
        outcome = messages_pb2.TaskOutcome(
            run_id=envelope.run_id, node_id=envelope.node_id, attempt=envelope.attempt,
            status=messages_pb2.TaskOutcome.STATUS_FAILED, worker_id=self.worker_id,
            started_at_ms=started, finished_at_ms=started, trace_context=envelope.trace_context,
            error=failure(error_type, message, retryable=retryable),
        )
        return Execution(outcome=outcome)

    async def _fetch_upstream(self, deliveries: Iterable[Delivery]) -> dict[int, Any]:
        """id(delivery) -> {node id: NodeResult} of its upstream nodes, or the error of its GetResults
        (a business error; unavailability is retried until the worker stops). One GetResults per
        run; a run whose results together exceed the message limit (RESOURCE_EXHAUSTED) is fetched
        again delivery by delivery, so that only a delivery whose own inputs are too large fails."""
        by_run: dict[str, list[Delivery]] = {}
        for delivery in deliveries:
            by_run.setdefault(delivery.envelope.run_id, []).append(delivery)
        groups = list(by_run.values())
        fetched = await self._fetch_groups(groups)
        split = [[d] for group, got in zip(groups, fetched, strict=True) if len(group) > 1 and _too_large(got)
                 for d in group]
        if split:
            groups += split
            fetched += await self._fetch_groups(split)
        return {id(d): got for group, got in zip(groups, fetched, strict=True) for d in group}

    async def _fetch_groups(self, groups: list[list[Delivery]]) -> list[Any]:
        """One GetResults per group (deliveries of one run): its results by node id, or its error."""
        responses = await asyncio.gather(
            *(self._get_results(group[0].envelope,
                                sorted({n for d in group for n in d.envelope.input_node_ids}))
              for group in groups),
            return_exceptions=True,
        )
        out: list[Any] = []
        for group, response in zip(groups, responses, strict=True):
            if isinstance(response, _GaveUp) or (
                isinstance(response, BaseException) and not isinstance(response, Exception)
            ):
                raise response
            if isinstance(response, Exception):
                log.error("fetching upstream results failed", run_id=group[0].envelope.run_id,
                          error=repr(response))
                out.append(response)
            else:
                out.append({result.node_id: result for result in response.results})
        return out

    async def _get_results(
        self, envelope: messages_pb2.TaskEnvelope, node_ids: list[str]
    ) -> rs_pb2.GetResultsResponse:
        """The GetResults of a run's deliveries, in the trace of ``envelope`` (the first of them)."""
        run_id = envelope.run_id
        request = rs_pb2.GetResultsRequest(run_id=run_id, node_ids=node_ids)
        backoff = Backoff()
        while True:
            try:
                with telemetry.trace_context(envelope.trace_context):
                    response = await self._downstream.call(self._stub.GetResults, request)
            except DownstreamUnavailable as exc:
                if self._stop.is_set():
                    raise _GaveUp() from exc
                self._intake.pause(PAUSE_FETCH)
                delay = backoff.next_delay()
                log.warning("cannot fetch upstream results; retrying", error=str(exc), run_id=run_id,
                            retry_in_s=round(delay, 3))
                await sleep_unless(self._stop, delay)
                continue
            self._intake.resume(PAUSE_FETCH)
            return response

    async def _dead_letter(self, stream: str, entry_id: bytes, raw: bytes, reason: str,
                           envelope: messages_pb2.TaskEnvelope | None, fields: dict[bytes, bytes]) -> None:
        """Dead-letter the entry (with its signature fields, so that a replay can check them) and
        acknowledge it, in one MULTI."""
        letter = messages_pb2.DeadLetter(
            queue=self._queue_of.get(stream, stream), original_id=_text(entry_id), reason=reason,
            raw=raw, dead_at_ms=now_ms(),
        )
        if envelope is not None:
            letter.run_id, letter.node_id = envelope.run_id, envelope.node_id
            letter.attempt = envelope.attempt
        try:
            pipe = self._redis.pipeline(transaction=True)
            signature = {f: fields[f] for f in (KEY_ID_FIELD, SIGNATURE_FIELD) if f in fields}
            add_dead_letter(pipe, letter.SerializeToString(), signature, cell=self.cell)
            pipe.xack(stream, keys.WORKER_GROUP, entry_id)
            await pipe.execute()
            metrics.TASKS_DEAD_LETTERED.labels(letter.queue).inc()
            log.error("dead-lettered an entry", stream=stream, entry_id=_text(entry_id), reason=reason)
        except REDIS_ERRORS as exc:
            # It stays pending: the next resync takes it up again (or the coordinator dead-letters
            # it by its delivery count if this worker dies).
            log.error("could not dead-letter an entry", stream=stream, entry_id=_text(entry_id),
                      reason=reason, error=str(exc))
        finally:
            self._finish(stream, entry_id)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _too_large(response: object) -> bool:
    """A GetResults answered RESOURCE_EXHAUSTED: the results exceed the gRPC message limit."""
    return (isinstance(response, grpc.aio.AioRpcError)
            and response.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)
