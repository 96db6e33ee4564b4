"""The outcome consumer loop: reads task outcomes from ``gf:outcomes`` in batches (its own
pending entries first, then new ones; entries that dead replicas left idle are claimed; the
stream is trimmed periodically) and hands each batch to :class:`OutcomeBatches`.

Unavailable downstreams or Redis: the batch is kept in memory and applied again after a backoff.
An outcome redelivered too often (a process crashed on it each time) is dead-lettered; the loop
never stops for one message. Every ``stats_log_interval_s`` in which something changed, and when the
consumer stops, one ``outcome consumer totals`` line logs the counters of :class:`ConsumerStats`
(applied, stale, duplicates, lost workers, ...) since the process started.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from redis.exceptions import ResponseError

from graflow_runtime import keys
from graflow_runtime.grpc_client import DownstreamUnavailable
from graflow_runtime.redis_client import REDIS_UNAVAILABLE

from graflow_scheduler.outcomes.apply import ConsumerStats, OutcomeBatches
from graflow_scheduler.outcomes.stream import DeadOutcome, Entry, OutcomeStream

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ConsumerConfig:
    batch: int = 256
    block_ms: int = 2000
    claim_idle_ms: int = 30_000
    trim_interval_s: float = 10.0
    max_backoff_s: float = 2.0
    # An outcome delivered more often than this without being applied is dead-lettered (poison).
    max_deliveries: int = 10
    # How often the counters are logged (only when they changed).
    stats_log_interval_s: float = 60.0


class OutcomeConsumer:
    def __init__(self, batches: OutcomeBatches, config: ConsumerConfig) -> None:
        self.batches = batches
        self.stream: OutcomeStream = batches.stream
        self.config = config
        self._stopping = asyncio.Event()
        self._busy = False
        self._task: asyncio.Task[None] | None = None
        self._logged_stats: dict[str, int] = dataclasses.asdict(batches.stats)
        self._next_stats_log = time.monotonic() + config.stats_log_interval_s

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="outcome-consumer")

    async def stop(self) -> None:
        """Stop reading; a batch being processed is finished (or left unacknowledged)."""
        self._stopping.set()
        if self._task is None:
            return
        if not self._busy:
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.log_stats(force=True)

    def log_stats(self, *, force: bool = False) -> None:
        """Log the counters if they changed since the last line (or always with ``force``)."""
        self._next_stats_log = time.monotonic() + self.config.stats_log_interval_s
        totals = dataclasses.asdict(self.stats)
        if force or totals != self._logged_stats:
            self._logged_stats = totals
            log.info("outcome consumer totals", **totals)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def run(self) -> None:
        """Until stopped: own pending entries first, then new entries; every claim interval the
        entries dead consumers left idle; every trim interval, trim the stream."""
        cfg = self.config
        claim_every = max(cfg.claim_idle_ms / 2000, 0.05)
        next_claim = next_trim = 0.0
        backlog, group_ready, failures = True, False, 0
        while not self._stopping.is_set():
            if time.monotonic() >= self._next_stats_log:
                self.log_stats()
            try:
                if not group_ready:
                    await self.stream.ensure_group()
                    group_ready = True
                now = time.monotonic()
                redelivered = True
                if backlog:
                    entries = await self.stream.read_own_pending(cfg.batch)
                    backlog = bool(entries)
                elif now >= next_claim and self.batches.dispatcher.available:
                    # (Not while the coordinator is down: every claim counts as a delivery.)
                    next_claim = now + claim_every
                    entries = await self.stream.claim_idle(cfg.claim_idle_ms, cfg.batch)
                elif now >= next_trim:
                    next_trim = now + cfg.trim_interval_s
                    await self.stream.trim()
                    entries = []
                else:
                    entries = await self.stream.read_new(
                        cfg.batch, min(cfg.block_ms, int(claim_every * 1000) + 1)
                    )
                    redelivered = False
                if entries:
                    self._busy = True
                    try:
                        poison = await self._poison(entries) if redelivered else []
                        await self._process_until_done(entries, poison)
                    finally:
                        self._busy = False
                failures = 0
            except ResponseError as exc:
                failures += 1
                if "NOGROUP" in str(exc):
                    log.warning("outcome stream or group vanished; creating it again", error=str(exc))
                    group_ready = False
                else:
                    log.error("redis rejected a command of the outcome consumer", error=str(exc))
                backlog = True
                await self._pause(min(cfg.max_backoff_s, 0.05 * 2**failures))
            except REDIS_UNAVAILABLE as exc:
                failures += 1
                self.stats.redis_errors += 1
                log.warning(
                    "redis unavailable; outcome consumer backs off", error=str(exc), failures=failures
                )
                backlog = True
                await self._pause(min(cfg.max_backoff_s, 0.05 * 2**failures))
            except Exception:  # noqa: BLE001 - the loop must survive anything; the batch stays pending
                failures += 1
                log.exception("outcome batch failed; it stays pending and is retried")
                backlog = True
                await self._pause(min(cfg.max_backoff_s, 0.05 * 2**failures))

    async def _poison(self, entries: Sequence[Entry]) -> list[DeadOutcome]:
        """Redelivered entries past ``max_deliveries``: a process that crashes on an outcome never
        reaches the code that counts exceptions, so the delivery count decides."""
        counts = await self.stream.delivery_counts([entry_id for entry_id, _ in entries])
        limit = self.config.max_deliveries
        return [
            DeadOutcome(
                entry_id,
                f"delivered {counts[entry_id]} times without being applied (limit {limit})",
                fields.get(keys.OUTCOME_FIELD, b""),
            )
            for entry_id, fields in entries
            if counts.get(entry_id, 0) > limit
        ]

    async def _process_until_done(self, entries: Sequence[Entry], poison: Sequence[DeadOutcome] = ()) -> None:
        failures = 0
        while True:
            try:
                await self.batches.process(entries, poison)
                return
            except (DownstreamUnavailable, *REDIS_UNAVAILABLE) as exc:
                # Retried in memory, not re-read: re-reads would count as deliveries (poison).
                failures += 1
                if self._stopping.is_set():
                    log.warning(
                        "stopping with an unacknowledged batch; it is applied again on restart",
                        entries=len(entries),
                    )
                    return
                log.warning(
                    "downstream or redis unavailable; batch kept and retried",
                    error=str(exc),
                    entries=len(entries),
                    failures=failures,
                )
                await self._pause(min(self.config.max_backoff_s, 0.05 * 2**failures))

    @property
    def stats(self) -> ConsumerStats:
        return self.batches.stats

    async def process(self, entries: Sequence[Entry], poison: Sequence[DeadOutcome] = ()) -> None:
        """One batch, without retries (see OutcomeBatches.process)."""
        await self.batches.process(entries, poison)
