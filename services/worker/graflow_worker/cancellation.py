"""Runs that have ended while this worker holds or may receive their work (invariant 11).

The worker learns of ended runs in two ways, both authoritative, both feeding :meth:`cancel`:

- :mod:`graflow_worker.run_endings` reads the scheduler's ``gf:ended`` stream (every end, whatever
  its status, is appended there atomically with the end): with every queue read, and every 0.2 s
  while a task runs;
- the consumer checks the runs of each read batch in their meta hash (``ended``) before starting
  anything (:mod:`graflow_worker.consumer`).

:meth:`cancel` records the runs (for ``ttl_s``, at most ``max_runs``, oldest dropped first; later
deliveries of an older one are caught by the consumer's check) and sets the cancel event that the
run's running tasks share through their ``TaskContext`` (``ctx.is_canceled()``; cooperative:
nothing interrupts a task). Deliveries of an ended run are not started: the worker commits a
``STATUS_CANCELED`` outcome (error ``RunEnded``) for each, counted here per run and logged once per
run with the count when no more came for ``quiet_s`` (:meth:`log_skipped`).
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
        # Deliveries skipped per ended run not logged yet: run id -> [count, monotonic time of the last].
        self._skipped: dict[str, list[float]] = {}
        self.skipped_total = 0

    def cancel(self, run_ids: Iterable[str]) -> None:
        """Record ended runs (repeats are harmless) and signal their running tasks."""
        now = time.monotonic()
        for run_id in run_ids:
            if run_id not in self._canceled:
                event = self._events.get(run_id)
                if event is not None:
                    event.set()
                    log.info("run ended; its running tasks on this worker are told", run_id=run_id)
            self._canceled[run_id] = now + self._ttl_s
            self._canceled.move_to_end(run_id)
        while self._canceled and (
            len(self._canceled) > self._max_runs or next(iter(self._canceled.values())) < now
        ):
            self._canceled.popitem(last=False)

    def is_canceled(self, run_id: str) -> bool:
        expiry = self._canceled.get(run_id)
        return expiry is not None and expiry >= time.monotonic()

    def has_running_tasks(self) -> bool:
        """True while a task holds a cancel event (its run's end must reach it)."""
        return len(self._events) > 0

    def event(self, run_id: str) -> threading.Event:
        """The cancel event shared by the tasks of ``run_id`` on this worker (set if ended)."""
        event = self._events.get(run_id)
        if event is None:
            event = threading.Event()
            self._events[run_id] = event
        if self.is_canceled(run_id):
            event.set()
        return event

    # ---- skipped deliveries ----
    def note_skipped(self, run_id: str) -> None:
        """A delivery of ended run ``run_id`` was skipped (not started)."""
        entry = self._skipped.setdefault(run_id, [0, 0.0])
        entry[0] += 1
        entry[1] = time.monotonic()
        self.skipped_total += 1

    def log_skipped(self, *, quiet_s: float = 1.0, force: bool = False) -> None:
        """Log, once per run, how many of its deliveries were skipped: for runs with none skipped
        in the last ``quiet_s`` (all of them with ``force``)."""
        now = time.monotonic()
        for run_id, (count, last) in list(self._skipped.items()):
            if force or now - last >= quiet_s:
                del self._skipped[run_id]
                log.info("skipped deliveries of an ended run (not started, acknowledged as canceled)",
                         run_id=run_id, skipped=int(count))
