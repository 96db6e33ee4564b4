"""The outcome consumer (a :class:`BackgroundLoop`), one per cell (docs/architecture.md, "Redis
Cluster: cells"): reads task outcomes from its cell's outcome stream (``gf:outcomes`` in the
default layout) in batches (its own pending entries first, then new ones; entries that dead
replicas left idle are claimed; the stream is trimmed periodically) and hands each batch to
:class:`OutcomeBatches`.

Redis or the result-store unavailable: the batch is kept in memory and applied again after a backoff.
An outcome redelivered too often (a process crashed on it each time) is dead-lettered; the loop
never stops for one message. Every ``stats_log_interval_s`` in which something changed, and when the
consumer stops, one ``outcome consumer totals`` line logs the counters of :class:`ConsumerStats`
(applied, stale, duplicates, lost workers, ...) since the process started.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from redis.exceptions import ResponseError

from graflow_runtime import keys
from graflow_runtime.backoff import backoff_delay
from graflow_runtime.grpc_client import DownstreamUnavailable
from graflow_runtime.loops import BackgroundLoop
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


@dataclass
class HeldBatch:
    """A batch read and not acknowledged yet. While downstreams or Redis are unavailable it is
    applied again from memory: read again, it would count as a delivery (poison)."""

    entries: Sequence[Entry]
    poison: Sequence[DeadOutcome]
    failures: int = 0


class OutcomeConsumer(BackgroundLoop):
    name = "outcome-consumer"

    def __init__(self, batches: OutcomeBatches, config: ConsumerConfig) -> None:
        super().__init__()
        self.batches = batches
        self.stream: OutcomeStream = batches.stream
        self.config = config
        self._claim_every = max(config.claim_idle_ms / 2000, 0.05)
        self._next_claim = self._next_trim = 0.0
        self._backlog, self._group_ready, self._failures = True, False, 0
        self._held: HeldBatch | None = None
        self._logged_stats: dict[str, int] = dataclasses.asdict(batches.stats)
        self._next_stats_log = time.monotonic() + config.stats_log_interval_s

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop reading; a batch being processed is finished (or left unacknowledged)."""
        await super().stop(timeout_s)
        if self._held is not None:
            log.warning(
                "stopping with an unacknowledged batch; it is applied again on restart",
                entries=len(self._held.entries),
                cell=self.stream.cell,
            )
            self._held = None
        self.log_stats(force=True)

    def log_stats(self, *, force: bool = False) -> None:
        """Log the counters if they changed since the last line (or always with ``force``)."""
        self._next_stats_log = time.monotonic() + self.config.stats_log_interval_s
        totals = dataclasses.asdict(self.stats)
        if force or totals != self._logged_stats:
            self._logged_stats = totals
            log.info("outcome consumer totals", cell=self.stream.cell, **totals)

    def _backoff(self, failures: int) -> float:
        return backoff_delay(failures, cap=self.config.max_backoff_s)

    async def step(self) -> float:
        """One batch: the one kept after a failed attempt, else the next one read (see
        :meth:`_read`). Returns 0, or the backoff after a failure."""
        if time.monotonic() >= self._next_stats_log:
            self.log_stats()
        try:
            held = self._held or await self._read()
            self._held = None
            if held is not None and not await self._apply(held):
                self._held = held
                return self._backoff(held.failures)
            self._failures = 0
            return 0.0
        except ResponseError as exc:
            self._failures += 1
            if "NOGROUP" in str(exc):
                log.warning("outcome stream or group vanished; creating it again", error=str(exc))
                self._group_ready = False
            else:
                log.error("redis rejected a command of the outcome consumer", error=str(exc))
        except REDIS_UNAVAILABLE as exc:
            self._failures += 1
            self.stats.redis_errors += 1
            log.warning(
                "redis unavailable; outcome consumer backs off", error=str(exc), failures=self._failures
            )
        except Exception:  # noqa: BLE001 - the loop must survive anything; the batch stays pending
            self._failures += 1
            log.exception("outcome batch failed; it stays pending and is retried")
        self._backlog = True
        return self._backoff(self._failures)

    async def _read(self) -> HeldBatch | None:
        """Own pending entries first, then new entries; every claim interval the entries dead
        consumers left idle; every trim interval, trim the stream. Stopping interrupts the reads
        (what they took stays pending), not the poison check."""
        cfg = self.config
        with self.interruptible():
            if not self._group_ready:
                await self.stream.ensure_group()
                self._group_ready = True
            now = time.monotonic()
            redelivered = True
            if self._backlog:
                entries = await self.stream.read_own_pending(cfg.batch)
                self._backlog = bool(entries)
            elif now >= self._next_claim:
                self._next_claim = now + self._claim_every
                entries = await self.stream.claim_idle(cfg.claim_idle_ms, cfg.batch)
            elif now >= self._next_trim:
                self._next_trim = now + cfg.trim_interval_s
                await self.stream.trim()
                entries = []
            else:
                entries = await self.stream.read_new(
                    cfg.batch, min(cfg.block_ms, int(self._claim_every * 1000) + 1)
                )
                redelivered = False
        if not entries:
            return None
        return HeldBatch(entries, await self._poison(entries) if redelivered else [])

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

    async def _apply(self, held: HeldBatch) -> bool:
        """Apply, dispatch and acknowledge a batch; False when downstreams or Redis were
        unavailable (it is kept in memory). On any other error it stays pending in the stream and
        is read again."""
        try:
            await self.batches.process(held.entries, held.poison)
        except (DownstreamUnavailable, *REDIS_UNAVAILABLE) as exc:
            held.failures += 1
            log.warning(
                "downstream or redis unavailable; batch kept and retried",
                error=str(exc),
                entries=len(held.entries),
                failures=held.failures,
            )
            return False
        return True

    @property
    def stats(self) -> ConsumerStats:
        return self.batches.stats

    async def process(self, entries: Sequence[Entry], poison: Sequence[DeadOutcome] = ()) -> None:
        """One batch, without retries (see OutcomeBatches.process)."""
        await self.batches.process(entries, poison)
