"""Exponential backoff of retried infrastructure calls, written once.

Every loop that retries after an unreachable Redis or downstream waits ``initial * 2**failures``
seconds, at most ``cap``: the SDK's watch stream, the scheduler's outcome consumer, the worker's
loops and :class:`~graflow_runtime.loops.BackgroundLoop`. Task retries are another matter: their
delays come from the workflow's RetryPolicy (the scheduler's ``retry`` module).

Plain Python, no third-party imports: the SDK imports it.
"""

from __future__ import annotations

import random

INITIAL_S = 0.05
CAP_S = 2.0
# Each delay of a Backoff is drawn from [1 - JITTER, 1] times its nominal value.
JITTER = 0.2
_MAX_EXPONENT = 64


def backoff_delay(failures: int, *, initial: float = INITIAL_S, cap: float = CAP_S) -> float:
    """Seconds to wait after ``failures`` consecutive failures: ``initial * 2**failures``, at most
    ``cap``."""
    # The exponent stops growing long after any cap is reached: 2**1024 does not fit a float, and a
    # loop retrying every 2 s through a half-hour outage gets there.
    return min(cap, initial * 2 ** min(failures, _MAX_EXPONENT))


class Backoff:
    """The delays of consecutive failures, from ``initial`` seconds doubling up to ``cap``;
    :meth:`reset` after a success. ``jitter`` spreads each delay down to ``(1 - jitter)`` of itself,
    so that processes that failed together do not all retry at the same moment."""

    def __init__(self, initial: float = INITIAL_S, cap: float = CAP_S, *, jitter: float = JITTER) -> None:
        self.initial = initial
        self.cap = cap
        self.jitter = jitter
        self._failures = 0

    def next_delay(self) -> float:
        delay = backoff_delay(self._failures, initial=self.initial, cap=self.cap)
        self._failures += 1
        if self.jitter:
            delay *= random.uniform(1.0 - self.jitter, 1.0)  # noqa: S311 - jitter, not crypto
        return delay

    def reset(self) -> None:
        self._failures = 0
