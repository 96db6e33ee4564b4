"""Flow control of the read loop: free slots, pause reasons, stop.

A slot is taken for every delivery read from a queue and given back only once its outcome is
committed (or once the worker gave up on it during shutdown). The read loop reads only while slots
are free, no pause reason is active (result-store or Redis unavailable, heartbeats failing) and the
worker is not stopping. Waiting is event-driven: whoever frees a slot or lifts a pause wakes the
read loop; nothing polls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


class Intake:
    def __init__(self, capacity: int, on_pause: Callable[[], None] | None = None) -> None:
        self.capacity = capacity
        self.used = 0
        self._reasons: set[str] = set()
        self._stopping = False
        self._changed = asyncio.Event()
        self._on_pause = on_pause
        # Set while the read loop waits for a slot, a lifted pause or the stop (for observers).
        self.idle = asyncio.Event()

    # ---- slots ----
    @property
    def free(self) -> int:
        return max(0, self.capacity - self.used)

    def take(self, count: int = 1) -> None:
        self.used += count

    def give(self, count: int = 1) -> None:
        self.used -= count
        self._changed.set()

    # ---- pauses ----
    @property
    def paused_reasons(self) -> frozenset[str]:
        return frozenset(self._reasons)

    def pause(self, reason: str) -> None:
        if reason in self._reasons:
            return
        self._reasons.add(reason)
        log.warning("intake paused; taking no new work", reason=reason)
        if self._on_pause is not None:
            self._on_pause()

    def resume(self, reason: str) -> None:
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        log.info("intake resumed", reason=reason, still_paused=sorted(self._reasons))
        self._changed.set()

    # ---- stop ----
    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        self._stopping = True
        self._changed.set()
        if self._on_pause is not None:
            self._on_pause()

    def ready(self) -> bool:
        return not self._stopping and not self._reasons and self.used < self.capacity

    async def wait_ready(self) -> bool:
        """Wait until a read may be issued; False when the worker is stopping."""
        while not self.ready():
            if self._stopping:
                return False
            self._changed.clear()
            self.idle.set()
            try:
                await self._changed.wait()
            finally:
                self.idle.clear()
        return True


async def sleep_unless(event: asyncio.Event, delay: float) -> bool:
    """Sleep ``delay`` seconds or until ``event`` is set; True when the event was set."""
    try:
        await asyncio.wait_for(event.wait(), delay)
    except TimeoutError:
        return False
    return True
