"""Retry decisions: whether a failed attempt is retried and after which delay."""

from __future__ import annotations

import random

from graflow_scheduler.graph.plan import RetryConfig

NO_RETRY = -1
_MAX_DELAY_MS = 2**32 - 1  # Delivery.delay_ms is a uint32


def backoff_delay_ms(retry: RetryConfig, failed_attempt: int, rng: random.Random | None = None) -> int:
    """``initial * factor ** (failed_attempt - 1)``, capped by ``max_interval`` (0 = no cap), spread
    by +/- ``jitter`` of itself."""
    exponent = max(0, failed_attempt - 1)
    try:
        delay = retry.initial_interval_ms * retry.backoff_factor**exponent
    except OverflowError:
        delay = float(_MAX_DELAY_MS)
    if retry.max_interval_ms:
        delay = min(delay, retry.max_interval_ms)
    if retry.jitter:
        delay *= 1.0 + (rng or random).uniform(-retry.jitter, retry.jitter)
    return int(min(max(delay, 0.0), _MAX_DELAY_MS))


def retry_delay_ms(
    retry: RetryConfig, failed_attempt: int, retryable: bool, rng: random.Random | None = None
) -> int:
    """The delay before attempt ``failed_attempt + 1``, or :data:`NO_RETRY` when the error is not
    retryable or the attempts are used up (``max_attempts <= 1`` never retries)."""
    if not retryable or failed_attempt >= retry.max_attempts:
        return NO_RETRY
    return backoff_delay_ms(retry, failed_attempt, rng)
