"""Process lifecycle: run a service on its event loop until SIGTERM/SIGINT; a second signal forces
exit.

The event loop is uvloop's when it is installed (every service's wheel and PEX requires it), the
standard asyncio one otherwise or when asked for (``EVENT_LOOP`` setting, docs/configuration.md).

Exit codes of every service process (docs/configuration.md, "Exit codes"): 0 stopped cleanly,
:data:`EXIT_FAILED`, :data:`EXIT_CONFIGURATION`, :data:`EXIT_FORCED`.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from graflow_runtime.errors import ConfigurationError
from graflow_runtime.settings import EventLoopChoice

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


@dataclass(frozen=True)
class EventLoop:
    """The event loop a service runs on: its name (with uvloop's version) and its factory."""

    name: str
    new: Callable[[], asyncio.AbstractEventLoop]


def event_loop(choice: EventLoopChoice, setting: str) -> EventLoop:
    """The loop ``choice`` names; :class:`ConfigurationError` naming ``setting`` (the variable) when
    uvloop is asked for and cannot be imported."""
    if choice != "asyncio":
        try:
            # Not inferred: the services' targets depend on uvloop, the SDK's wheel does not need it.
            import uvloop  # pants: no-infer-dep
        except ImportError as exc:
            if choice == "uvloop":
                raise ConfigurationError(
                    f"{setting}=uvloop but uvloop cannot be imported ({exc}); install it "
                    f"(pip install uvloop) or set {setting}=asyncio"
                ) from exc
        else:
            return EventLoop(f"uvloop {uvloop.__version__}", uvloop.new_event_loop)
    return EventLoop("asyncio", asyncio.new_event_loop)


def run_service(main: Callable[[ShutdownSignal], Awaitable[None]], loop: EventLoop) -> None:
    """Run a service's main coroutine to its end on ``loop``, as ``asyncio.run`` would (remaining
    tasks cancelled, async generators and the default executor shut down), with signal handling
    installed."""

    async def serve() -> None:
        shutdown = ShutdownSignal()
        shutdown.install()
        await main(shutdown)

    with asyncio.Runner(loop_factory=loop.new) as runner:
        runner.run(serve())
