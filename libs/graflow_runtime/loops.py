"""Background loops that survive Redis outages: each step's failure is logged, followed by a
bounded exponential back-off, and the loop carries on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import structlog

from graflow_runtime import metrics
from graflow_runtime.backoff import Backoff
from graflow_runtime.redis_client import REDIS_UNAVAILABLE

log = structlog.get_logger(__name__)

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0


class BackgroundLoop:
    """Runs :meth:`step` until stopped; ``step`` returns how long to sleep before the next one.

    :meth:`wake` cuts the current sleep short (e.g. new work is due earlier than planned).
    Inside :meth:`interruptible`, :meth:`stop` cancels the step at once instead of waiting for it.
    """

    name = "loop"

    def __init__(self) -> None:
        self._stopping = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._interruptible = False

    async def step(self) -> float:
        raise NotImplementedError

    def start(self, *, delay_s: float = 0.0) -> None:
        """Run the loop; the first step comes after ``delay_s`` (cut short by :meth:`wake`)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(delay_s), name=self.name)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Marks a part of :meth:`step` that :meth:`stop` cancels at once: a wait that holds nothing
        yet (a blocking read for new work), or work the next start does again anyway."""
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def wake(self) -> None:
        self._wakeup.set()

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Let the current step finish (up to ``timeout_s``; at once inside :meth:`interruptible`),
        then end the loop."""
        self._stopping.set()
        self._wakeup.set()
        if self._task is None:
            return
        task, self._task = self._task, None
        if self._interruptible:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            log.warning("loop did not stop in time; cancelling it", loop=self.name, timeout_s=timeout_s)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, delay_s: float) -> None:
        if delay_s > 0:
            await self._sleep(delay_s)
        backoff = Backoff(initial=BACKOFF_MIN_S, cap=BACKOFF_MAX_S, jitter=0.0)
        while not self._stopping.is_set():
            try:
                delay = await self.step()
                backoff.reset()
            except REDIS_UNAVAILABLE as exc:
                metrics.REDIS_ERRORS.labels(type(exc).__name__).inc()
                delay = backoff.next_delay()
                log.warning(
                    "redis unavailable; backing off", loop=self.name, error=str(exc), retry_in_s=delay
                )
            except Exception:
                delay = backoff.next_delay()
                log.exception("loop step failed; backing off", loop=self.name, retry_in_s=delay)
            await self._sleep(delay)

    async def _sleep(self, delay_s: float) -> None:
        if delay_s > 0 and not self._stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), delay_s)
        self._wakeup.clear()
