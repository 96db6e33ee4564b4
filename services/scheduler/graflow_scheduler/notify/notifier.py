"""Delivery of feedback notifications to the configured webhook, at least once.

One reader per cell (a blocking read stays in one slot) takes entries of the cell's
feedback-opened stream through the consumer group ``notifier``; the consumer name is the replica's
(``GRAFLOW_SCHEDULER_CONSUMER_NAME``), so replicas share the entries. Each entry is delivered by a
task of its own, at most ``concurrency`` at once in the process: a slow or dead receiver holds
those slots and nothing else (outcomes, dispatch, the API never wait for a webhook).

A reader reserves its slots before it reads (and reads at most that many entries), then hands one
to each task it starts and gives back the rest: readers of several cells block in their reads at
the same time, and counting the free slots before reading let each of them take all of them (a
factor of the cell count, the extra POSTs timing out in the HTTP pool unsent). The slots are a
FIFO semaphore and a reader reserves at most its share (``concurrency`` over the cells, at least
one), so a reader blocked on a quiet cell does not keep the others from reading.

An entry stays pending in the group until its notification is settled: delivered (2xx), refused
(another 4xx than 408/429: retrying cannot help), given up after ``max_attempts``, or not needed
(the request was answered or closed before an attempt). Between attempts the task waits with
exponential backoff and jitter, and touches the entry (``XCLAIM`` with idle 0) before each one,
so that no other replica takes a live notification over. Entries left idle longer than
``claim_idle_ms`` (a replica died holding them) are claimed by another replica (``XAUTOCLAIM``),
which starts their attempts again; a restarted replica with the same consumer name first reads its
own pending entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import redis.asyncio as aioredis
import structlog
from prometheus_client import Counter, Histogram
from redis.exceptions import ResponseError

from graflow_api.v1 import feedback_pb2
from graflow_runtime import keys, metrics
from graflow_runtime.backoff import Backoff
from graflow_runtime.errors import NotFound
from graflow_runtime.loops import BackgroundLoop
from graflow_runtime.redis_client import REDIS_UNAVAILABLE

from graflow_scheduler.notify.payload import build_payload, encode, headers
from graflow_scheduler.settings import SchedulerSettings
from graflow_scheduler.waits.feedback import FeedbackRequests

log = structlog.get_logger(__name__)

DELIVERIES = Counter(
    "graflow_webhook_deliveries_total",
    "Feedback webhook attempts by result: delivered (2xx), retried (a failed attempt that will be "
    "retried), failed (given up: refused or out of attempts), skipped (answered or closed before).",
    ("result",),
    registry=metrics.REGISTRY,
)
DELIVERY_SECONDS = Histogram(
    "graflow_webhook_delivery_seconds",
    "Time of one webhook POST until its answer, its timeout or its connection error.",
    buckets=metrics.LATENCY_BUCKETS,
    registry=metrics.REGISTRY,
)


@dataclass(slots=True)
class Reservation:
    """Slots a reader holds for the entries it reads: handed one by one to delivery tasks."""

    count: int


Verdict = Literal["delivered", "retry", "refused"]
Entry = tuple[bytes, dict[bytes, bytes]]
# Statuses worth retrying besides 5xx: the receiver timed out, or asks to slow down.
RETRIED_4XX = (408, 429)
# Longest wait between two looks for entries to claim from dead replicas.
CLAIM_CHECK_MAX_S = 30.0


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    url: str
    secret: str
    timeout_s: float
    max_attempts: int
    backoff_initial_s: float
    backoff_max_s: float
    concurrency: int
    claim_idle_ms: int
    console_url: str
    consumer: str
    block_ms: int

    @classmethod
    def from_settings(cls, s: SchedulerSettings) -> WebhookConfig | None:
        """The webhook the settings name, or None when notifications are off."""
        if not s.feedback_webhook_url:
            return None
        return cls(
            url=s.feedback_webhook_url,
            secret=s.feedback_webhook_secret,
            timeout_s=s.feedback_webhook_timeout_s,
            max_attempts=s.feedback_webhook_max_attempts,
            backoff_initial_s=s.feedback_webhook_backoff_initial_s,
            backoff_max_s=s.feedback_webhook_backoff_max_s,
            concurrency=s.feedback_webhook_concurrency,
            claim_idle_ms=s.feedback_webhook_claim_idle_ms,
            console_url=s.console_url,
            consumer=s.consumer_name,
            block_ms=s.outcome_block_ms,
        )


def webhook_host(url: str) -> str:
    """The receiver's host (and port) of a webhook URL, for logs: never its path or query."""
    return urlsplit(url).netloc.rpartition("@")[2]


def verdict(status_code: int) -> Verdict:
    if 200 <= status_code < 300:
        return "delivered"
    if status_code >= 500 or status_code in RETRIED_4XX:
        return "retry"
    return "refused"


class FeedbackNotifier:
    """The notifier of one scheduler process: a :class:`CellReader` per cell, the delivery tasks."""

    def __init__(self, redis: aioredis.Redis, feedback: FeedbackRequests, config: WebhookConfig) -> None:
        self.redis = redis
        self.feedback = feedback
        self.config = config
        self.http = httpx.AsyncClient(
            timeout=config.timeout_s, limits=httpx.Limits(max_connections=config.concurrency)
        )
        self.readers = [CellReader(self, cell) for cell in keys.cells()]
        self._inflight: dict[tuple[int, bytes], asyncio.Task[None]] = {}
        # One permit per delivery task, or reserved by a reader for the entries it is reading.
        self._slots = asyncio.Semaphore(config.concurrency)
        self.share = max(1, config.concurrency // len(self.readers))

    async def start(self) -> None:
        if not self.config.secret:
            log.warning(
                "feedback webhook requests are not signed: set GRAFLOW_SCHEDULER_FEEDBACK_WEBHOOK_SECRET "
                "so that the receiver can check they come from Graflow",
                host=webhook_host(self.config.url),
            )
        for reader in self.readers:
            await reader.ensure_group()
            reader.start()
        # The host only: a webhook URL's path is often its secret (Slack's incoming webhooks).
        log.info("feedback webhook on", host=webhook_host(self.config.url),
                 signed="yes" if self.config.secret else "no", consumer=self.config.consumer)

    async def stop(self) -> None:
        """Stop reading and drop the notifications in flight: they stay pending, so this replica
        (same consumer name) or another one delivers them later."""
        for reader in self.readers:
            await reader.stop()
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.http.aclose()

    # ---- slots ----
    @contextlib.asynccontextmanager
    async def reserved(self) -> AsyncIterator[Reservation]:
        """Wait for a free slot (in turn with the other readers), take up to :attr:`share`, and
        give back on exit those not handed to a delivery task."""
        await self._slots.acquire()
        reservation = Reservation(1)
        try:
            while reservation.count < self.share and not self._slots.locked():
                await self._slots.acquire()  # at once: not locked
                reservation.count += 1
            yield reservation
        finally:
            for _ in range(reservation.count):
                self._slots.release()

    def spawn(self, cell: int, entries: list[Entry], reservation: Reservation) -> None:
        """Start a delivery task per entry, each with one of the reserved slots (released when it
        ends); ``entries`` are at most the reserved count (a read's ``count``)."""
        for entry_id, fields in entries:
            if (cell, entry_id) in self._inflight:
                continue  # claimed again while its task still works on it: its slot goes back
            reservation.count -= 1
            self._inflight[(cell, entry_id)] = asyncio.create_task(
                self._deliver(cell, entry_id, fields), name=f"feedback-notify-{entry_id.decode()}"
            )

    # ---- one notification ----
    async def _deliver(self, cell: int, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        stream = keys.feedback_opened(cell)
        run_id = fields.get(keys.FEEDBACK_OPENED_RUN_FIELD, b"").decode()
        request_id = fields.get(keys.FEEDBACK_OPENED_REQUEST_FIELD, b"").decode()
        bound = log.bind(run_id=run_id, request_id=request_id, entry=entry_id.decode())
        try:
            if not run_id or not request_id:
                bound.error("feedback notification entry has no run or request id; dropped", fields=fields)
            else:
                await self._attempts(stream, entry_id, run_id, request_id, bound)
            await self.redis.xack(stream, keys.FEEDBACK_NOTIFIER_GROUP, entry_id)
        except REDIS_UNAVAILABLE as exc:
            metrics.REDIS_ERRORS.labels(type(exc).__name__).inc()
            bound.warning(
                "redis unavailable; the notification stays pending and is retried later", error=str(exc)
            )
        except Exception:  # noqa: BLE001 - a bug must not kill the task silently; logged with its stack
            # Not acknowledged: claimed again after FEEDBACK_WEBHOOK_CLAIM_IDLE_MS.
            bound.exception("feedback notification failed unexpectedly; it stays pending")
        finally:
            self._inflight.pop((cell, entry_id), None)
            self._slots.release()

    async def _attempts(
        self, stream: str, entry_id: bytes, run_id: str, request_id: str, bound: Any
    ) -> None:
        """Attempts until the notification is settled (the caller acknowledges the entry)."""
        config = self.config
        backoff = Backoff(config.backoff_initial_s, config.backoff_max_s)
        detail = ""
        delay_s = 0.0
        for attempt in range(1, config.max_attempts + 1):
            if attempt > 1:
                await asyncio.sleep(delay_s)
                await self.redis.xclaim(
                    stream, keys.FEEDBACK_NOTIFIER_GROUP, config.consumer, 0, [entry_id], justid=True
                )
            try:
                request = await self.feedback.get(run_id, request_id)
            except NotFound as exc:
                DELIVERIES.labels("skipped").inc()
                bound.info("feedback request gone; not notified", reason=str(exc))
                return
            if request.state != feedback_pb2.FEEDBACK_STATE_PENDING:
                DELIVERIES.labels("skipped").inc()
                bound.info(
                    "feedback request no longer pending; not notified",
                    state=feedback_pb2.FeedbackState.Name(request.state),
                )
                return
            result, detail = await self._post(request)
            if result == "delivered":
                DELIVERIES.labels("delivered").inc()
                bound.info("feedback notification delivered", attempt=attempt, answer=detail)
                return
            if result == "refused":
                DELIVERIES.labels("failed").inc()
                bound.error(
                    "feedback webhook refused the notification; not retried (check the URL and the "
                    "receiver's signature check)",
                    attempt=attempt, answer=detail, url=config.url,
                )
                return
            if attempt < config.max_attempts:
                DELIVERIES.labels("retried").inc()
                delay_s = backoff.next_delay()
                bound.warning("feedback notification failed; will retry", attempt=attempt, answer=detail,
                              retry_in_s=round(delay_s, 2))
        DELIVERIES.labels("failed").inc()
        bound.error(
            "feedback notification given up after every attempt failed",
            attempts=config.max_attempts, answer=detail, url=config.url,
        )

    async def _post(self, request: feedback_pb2.FeedbackRequest) -> tuple[Verdict, str]:
        body = encode(build_payload(request, self.config.console_url))
        started = time.monotonic()
        try:
            # httpx's timeout bounds each phase; this bounds the whole POST (a receiver that
            # answers byte by byte).
            async with asyncio.timeout(self.config.timeout_s):
                response = await self.http.post(
                    self.config.url, content=body, headers=headers(body, self.config.secret)
                )
        except (httpx.HTTPError, TimeoutError) as exc:
            return "retry", f"{type(exc).__name__}: {exc}".rstrip(": ")
        finally:
            DELIVERY_SECONDS.observe(time.monotonic() - started)
        return verdict(response.status_code), f"HTTP {response.status_code}"


class CellReader(BackgroundLoop):
    """Feeds the notifier with a cell's entries: this consumer's own pending ones once (a restart),
    then new ones (blocking read) and, now and then, those idle at dead replicas."""

    def __init__(self, notifier: FeedbackNotifier, cell: int) -> None:
        super().__init__()
        self.notifier = notifier
        self.cell = cell
        self.name = f"feedback-notifier-{cell}"
        self.stream = keys.feedback_opened(cell)
        # Where the read of this consumer's own pending entries goes on (None once all were read).
        self._own_from: str | None = "0"
        self._next_claim = 0.0
        self._claim_every_s = min(CLAIM_CHECK_MAX_S, notifier.config.claim_idle_ms / 2000)

    async def ensure_group(self) -> None:
        """The group reads from the stream's start: entries appended before it existed are sent."""
        try:
            await self.notifier.redis.xgroup_create(
                self.stream, keys.FEEDBACK_NOTIFIER_GROUP, id="0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def step(self) -> float:
        """One round: own pending entries (once), entries idle at dead replicas (now and then),
        new entries. Each read takes at most the slots reserved for it (waiting for a free one
        while every slot delivers); those it did not fill go back. Stopping cancels it at once:
        an entry read but not yet handed to a task stays pending (read again on restart, or
        claimed once idle)."""
        notifier, config = self.notifier, self.notifier.config
        with self.interruptible():
            # A full batch (own or claimed) may have more behind it: read on at the next round.
            if self._own_from is not None:
                async with notifier.reserved() as reservation:
                    wanted = reservation.count
                    entries = await self._read(self._own_from, wanted, None)
                    notifier.spawn(self.cell, entries, reservation)
                self._own_from = entries[-1][0].decode() if len(entries) == wanted else None
            if time.monotonic() >= self._next_claim:
                async with notifier.reserved() as reservation:
                    wanted = reservation.count
                    claimed = await self._claim_idle(wanted)
                    notifier.spawn(self.cell, claimed, reservation)
                if len(claimed) < wanted:
                    self._next_claim = time.monotonic() + self._claim_every_s
            async with notifier.reserved() as reservation:
                entries = await self._read(">", reservation.count, config.block_ms)
                notifier.spawn(self.cell, entries, reservation)
        return 0.0

    async def _read(self, start: str, count: int, block_ms: int | None) -> list[Entry]:
        if count <= 0:
            return []
        response = await self.notifier.redis.xreadgroup(
            keys.FEEDBACK_NOTIFIER_GROUP, self.notifier.config.consumer, {self.stream: start},
            count=count, block=block_ms,
        )
        # An own pending entry trimmed meanwhile comes back with no fields (dropped, logged).
        return [(entry_id, fields or {}) for entry_id, fields in response[0][1]] if response else []

    async def _claim_idle(self, count: int) -> list[Entry]:
        if count <= 0:
            return []
        config = self.notifier.config
        _, entries, deleted = await self.notifier.redis.xautoclaim(
            self.stream, keys.FEEDBACK_NOTIFIER_GROUP, config.consumer, config.claim_idle_ms, "0-0",
            count=count,
        )
        if deleted:
            DELIVERIES.labels("failed").inc(len(deleted))
            log.error(
                "feedback notifications trimmed from their stream before delivery; not sent (the "
                "webhook was down while the stream reached its cap)",
                stream=self.stream, entries=[d.decode() for d in deleted],
            )
            await self.notifier.redis.xack(self.stream, keys.FEEDBACK_NOTIFIER_GROUP, *deleted)
        if entries:
            log.info(
                "feedback notifications taken over from an idle consumer",
                stream=self.stream,
                count=len(entries),
            )
        return [(entry_id, fields or {}) for entry_id, fields in entries]
