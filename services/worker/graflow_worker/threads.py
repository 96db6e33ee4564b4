"""Handing results of synchronous task functions from their threads back to the event loop.

``asyncio.wrap_future`` wakes the loop once per finished future: the pool thread writes to the
loop's self-pipe and the loop runs an iteration for it. With many tiny tasks finishing together
that is a syscall and a loop iteration per task. :class:`CompletionBridge` queues finished futures
instead and wakes the loop only when no wake-up is pending yet; the loop then settles every queued
future in one callback. Results, exceptions (with their tracebacks) and cancellation behave as with
``wrap_future``: cancelling the awaiting side cancels the work if it has not started.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any


def _converted(exc: BaseException) -> BaseException:
    """Exceptions of ``concurrent.futures`` as their asyncio counterparts (as ``wrap_future`` does)."""
    if type(exc) is concurrent.futures.CancelledError:
        return asyncio.CancelledError(*exc.args)
    if type(exc) is concurrent.futures.InvalidStateError:
        return asyncio.InvalidStateError(*exc.args)
    return exc


class CompletionBridge:
    """Awaitable views of ``concurrent.futures`` futures, settled on ``loop`` in batches."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._finished: list[tuple[concurrent.futures.Future[Any], asyncio.Future[Any]]] = []
        self._wake_pending = False

    def wrap(self, future: concurrent.futures.Future[Any]) -> asyncio.Future[Any]:
        waiter: asyncio.Future[Any] = self.loop.create_future()

        def cancel_work(done: asyncio.Future[Any]) -> None:
            if done.cancelled():
                future.cancel()  # no effect once the function runs

        waiter.add_done_callback(cancel_work)
        future.add_done_callback(lambda f: self._finish(f, waiter))
        return waiter

    def _finish(self, future: concurrent.futures.Future[Any], waiter: asyncio.Future[Any]) -> None:
        """Runs in the pool thread that finished ``future`` (or on the loop if it was done already)."""
        with self._lock:
            self._finished.append((future, waiter))
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self.loop.call_soon_threadsafe(self._settle)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def _settle(self) -> None:
        with self._lock:
            finished, self._finished = self._finished, []
            self._wake_pending = False
        for future, waiter in finished:
            if waiter.done():
                continue
            if future.cancelled():
                waiter.cancel()
                continue
            exc = future.exception()
            if exc is not None:
                waiter.set_exception(_converted(exc))
            else:
                waiter.set_result(future.result())
