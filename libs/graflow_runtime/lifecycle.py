"""Process lifecycle: run a service until SIGTERM/SIGINT; a second signal forces exit.

Exit codes of every service process (docs/configuration.md, "Exit codes"): 0 stopped cleanly,
:data:`EXIT_FAILED`, :data:`EXIT_CONFIGURATION`, :data:`EXIT_FORCED`.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)

# Could not start or run: a dependency (Redis) is unreachable, or an unexpected error.
EXIT_FAILED = 1
# Bad configuration: invalid settings, task modules that do not load.
EXIT_CONFIGURATION = 2
# A second SIGTERM/SIGINT: exited at once, without draining.
EXIT_FORCED = 130


class ShutdownSignal:
    """An event set by the first SIGTERM/SIGINT. The second one exits the process at once."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self._count = 0

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._count += 1
        if self._count == 1:
            log.info("shutdown requested; draining (send the signal again to force exit)", signal=sig.name)
            self.event.set()
        else:
            log.warning("second signal; exiting now", signal=sig.name)
            os._exit(EXIT_FORCED)

    async def wait(self) -> None:
        await self.event.wait()


def run_service(main: Callable[[ShutdownSignal], Awaitable[None]]) -> None:
    """``asyncio.run`` a service's main coroutine with signal handling installed."""

    async def runner() -> None:
        shutdown = ShutdownSignal()
        shutdown.install()
        await main(shutdown)

    asyncio.run(runner())
