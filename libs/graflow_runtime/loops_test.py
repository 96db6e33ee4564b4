"""BackgroundLoop: a delayed first step, and stop() with steps that may or may not be interrupted."""

from __future__ import annotations

import asyncio

from graflow_runtime.loops import BackgroundLoop


class Recorder(BackgroundLoop):
    """Each step waits for ``release`` (inside ``interruptible()`` when asked to) and records how it
    ended."""

    def __init__(self, *, interruptible: bool = False) -> None:
        super().__init__()
        self.steps: list[str] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self._in_interruptible = interruptible

    async def step(self) -> float:
        self.started.set()
        try:
            if self._in_interruptible:
                with self.interruptible():
                    await self.release.wait()
            else:
                await self.release.wait()
        except asyncio.CancelledError:
            self.steps.append("cancelled")
            raise
        self.steps.append("finished")
        return 3600.0


async def test_the_first_step_comes_after_the_start_delay_or_when_woken() -> None:
    loop = Recorder()
    loop.release.set()
    loop.start(delay_s=3600.0)
    await asyncio.sleep(0.05)
    assert loop.steps == []  # still in the delay

    loop.wake()
    await asyncio.wait_for(loop.started.wait(), 5.0)
    await loop.stop()

    assert loop.steps == ["finished"]


async def test_stop_cancels_a_step_inside_interruptible_at_once() -> None:
    loop = Recorder(interruptible=True)
    loop.start()
    await asyncio.wait_for(loop.started.wait(), 5.0)

    await asyncio.wait_for(loop.stop(timeout_s=3600.0), 5.0)

    assert loop.steps == ["cancelled"]


async def test_stop_lets_a_step_outside_interruptible_finish() -> None:
    loop = Recorder()
    loop.start()
    await asyncio.wait_for(loop.started.wait(), 5.0)

    stopping = asyncio.create_task(loop.stop(timeout_s=3600.0))
    await asyncio.sleep(0.05)
    assert not stopping.done()  # waits for the step
    loop.release.set()
    await asyncio.wait_for(stopping, 5.0)

    assert loop.steps == ["finished"]
