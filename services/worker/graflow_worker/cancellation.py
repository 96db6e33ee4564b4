"""Runs canceled while this worker holds or may receive their work.

The coordinator lists recently canceled runs in every heartbeat response; :meth:`cancel` records
them (for ``ttl_s``, at most ``max_runs``, oldest dropped first) and sets the cancel event that the
run's running tasks share through their ``TaskContext`` (``ctx.is_canceled()``; cooperative:
nothing interrupts a task). Deliveries of a canceled run read afterwards are not started: the
runner reports them failed with ``RunCanceled`` (not retryable), an outcome the scheduler ignores
because the run has ended.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable

import structlog

log = structlog.get_logger(__name__)


class Cancellations:
    def __init__(self, *, ttl_s: float = 600.0, max_runs: int = 100_000) -> None:
        self._ttl_s = ttl_s
        self._max_runs = max_runs
        self._canceled: OrderedDict[str, float] = OrderedDict()  # run id -> monotonic expiry
        # One event per run with running tasks; dropped with the last context holding it.
        self._events: weakref.WeakValueDictionary[str, threading.Event] = weakref.WeakValueDictionary()

    def cancel(self, run_ids: Iterable[str]) -> None:
        """Record canceled runs (repeats are harmless) and signal their running tasks."""
        now = time.monotonic()
        for run_id in run_ids:
            if run_id not in self._canceled:
                event = self._events.get(run_id)
                log.info("run canceled; its tasks on this worker are told", run_id=run_id,
                         running=event is not None)
                if event is not None:
                    event.set()
            self._canceled[run_id] = now + self._ttl_s
            self._canceled.move_to_end(run_id)
        while self._canceled and (
            len(self._canceled) > self._max_runs or next(iter(self._canceled.values())) < now
        ):
            self._canceled.popitem(last=False)

    def is_canceled(self, run_id: str) -> bool:
        expiry = self._canceled.get(run_id)
        return expiry is not None and expiry >= time.monotonic()

    def event(self, run_id: str) -> threading.Event:
        """The cancel event shared by the tasks of ``run_id`` on this worker (set if canceled)."""
        event = self._events.get(run_id)
        if event is None:
            event = threading.Event()
            self._events[run_id] = event
        if self.is_canceled(run_id):
            event.set()
        return event
