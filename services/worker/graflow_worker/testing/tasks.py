"""Task functions used by the worker's own tests (registered as ``graflow_worker.testing.tasks``).
A test utility: no wheel or PEX carries this module, so a deployed worker cannot load it.

:data:`PROBE` records what ran, how many ran at once, and holds tasks until a test releases them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

from graflow import NonRetryableError, TaskContext, task


class Probe:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.running = 0
            self.max_running = 0
            self.calls: Counter[str] = Counter()
            self.started: set[str] = set()
            self.gates: dict[str, threading.Event] = {}

    def enter(self, tag: str) -> None:
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.calls[tag] += 1
            self.started.add(tag)

    def leave(self) -> None:
        with self._lock:
            self.running -= 1

    def gate(self, key: str) -> threading.Event:
        with self._lock:
            return self.gates.setdefault(key, threading.Event())

    def release(self, key: str) -> None:
        self.gate(key).set()


PROBE = Probe()


@task
def add(a: int, b: int = 10) -> int:
    return a + b


@task
def describe(x: Any, y: Any = "default-y", z: Any = "default-z") -> dict[str, Any]:
    return {"x": x, "y": y, "z": z}


@task
def collect(**upstream: Any) -> dict[str, Any]:
    return upstream


@task
def collect_with_base(base: int, **rest: Any) -> dict[str, Any]:
    return {"base": base, "rest": rest}


@task
def plus_one(add: int) -> int:
    """Takes the result of an upstream ``add`` node, whatever its node id."""
    return add + 1


@task
def repeat(text: str, times: int) -> str:
    return text * times


@task
async def async_double(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


@task
def explode(message: str = "boom") -> None:
    raise ValueError(message)


@task
def refuse() -> None:
    raise NonRetryableError("bad input, retrying won't help")


@task
def own_timeout_error() -> None:
    raise TimeoutError("the task's own timeout")


@task
def unserializable() -> Any:
    return object()


@task
def raw_bytes() -> bytes:
    return b"\x00\x01"


@task
def tracked(tag: str, hold_s: float = 0.02) -> str:
    """Counts how many tracked tasks run at once."""
    PROBE.enter(tag)
    try:
        time.sleep(hold_s)
    finally:
        PROBE.leave()
    return tag


@task
async def async_tracked(tag: str, hold_s: float = 0.02) -> str:
    PROBE.enter(tag)
    try:
        await asyncio.sleep(hold_s)
    finally:
        PROBE.leave()
    return tag


@task
def hold(key: str) -> str:
    """Runs until the test releases ``key`` (at most 30 s)."""
    PROBE.enter(key)
    try:
        PROBE.gate(key).wait(30)
    finally:
        PROBE.leave()
    return key


@task
async def async_sleep(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@task(inject_context=True)
def with_channel(ctx: TaskContext, key: str, value: Any) -> dict[str, Any]:
    ctx.channel.set(key, value)
    return {"got": ctx.channel.get(key), "keys": ctx.channel.keys(), "node": ctx.node_id,
            "attempt": ctx.attempt, "run": ctx.run_id, "worker": ctx.worker_id}


@task(inject_context=True)
async def async_channel(ctx: TaskContext, key: str) -> Any:
    return await asyncio.to_thread(ctx.channel.get, key)


@task(inject_context=True)
async def async_channel_direct(ctx: TaskContext, key: str) -> Any:
    return ctx.channel.get(key)


# ---- dynamic control flow and cancellation (runner_flow_test.py) ----
@task(inject_context=True)
def steer(ctx: TaskContext, fail: bool = False) -> dict[str, Any]:
    """Records a goto and a next_task, then fails when asked (its directives are then dropped)."""
    ctx.goto("elsewhere")
    ctx.next_task(add, a=1)
    if fail:
        raise ValueError("failed after recording directives")
    return {"cycle": ctx.cycle_count, "max_cycles": ctx.max_cycles, "can_iterate": ctx.can_iterate()}


@task
def refine(draft: int = 0, data: Any = None) -> Any:
    return {"draft": draft, "data": data}


@task(inject_context=True)
def stop_on_cancel(ctx: TaskContext, timeout_s: float = 10.0) -> str:
    """Runs (in a thread) until ``ctx.check_canceled()`` raises, at most ``timeout_s``."""
    PROBE.enter(f"stop_on_cancel:{ctx.run_id}")
    PROBE.leave()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ctx.check_canceled()
        time.sleep(0.01)
    return "never canceled"


@task(inject_context=True)
def cancel_then_check(ctx: TaskContext) -> str:
    """Cancels its own run (a directive), then checks: not the run's end yet, so a failure."""
    ctx.cancel_workflow("enough")
    ctx.check_canceled()
    return "unreachable"


@task(inject_context=True)
async def wait_for_cancel(ctx: TaskContext, timeout_s: float = 10.0) -> str:
    """Waits until its run is canceled (cooperatively), at most ``timeout_s``."""
    PROBE.enter(f"wait_for_cancel:{ctx.run_id}")
    PROBE.leave()
    deadline = time.monotonic() + timeout_s
    while not ctx.is_canceled():
        if time.monotonic() > deadline:
            return "never canceled"
        await asyncio.sleep(0.01)
    return "saw the cancel"
