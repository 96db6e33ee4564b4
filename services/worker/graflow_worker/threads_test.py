"""CompletionBridge: thread-pool results reach the loop like asyncio.wrap_future's, in batches."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import traceback

import pytest

from graflow_worker.threads import CompletionBridge


@pytest.fixture
def pool() -> concurrent.futures.ThreadPoolExecutor:
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=4)
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


def fails() -> None:
    raise ValueError("boom")


async def test_results_and_exceptions_with_their_tracebacks_arrive(pool):
    bridge = CompletionBridge(asyncio.get_running_loop())
    assert await bridge.wrap(pool.submit(sum, [1, 2, 3])) == 6
    with pytest.raises(ValueError, match="boom") as info:
        await bridge.wrap(pool.submit(fails))
    assert "fails" in "".join(traceback.format_tb(info.value.__traceback__))
    done = pool.submit(int, "7")
    done.result()
    assert await bridge.wrap(done) == 7  # already finished when wrapped


async def test_futures_finishing_together_wake_the_loop_once(pool, monkeypatch):
    loop = asyncio.get_running_loop()
    bridge = CompletionBridge(loop)
    wakeups = 0
    real = loop.call_soon_threadsafe

    def counting(*args, **kwargs):
        nonlocal wakeups
        wakeups += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    gate = threading.Event()
    futures = [pool.submit(lambda i=i: gate.wait(5) and i) for i in range(4)]
    waiters = [bridge.wrap(f) for f in futures]
    gate.set()
    concurrent.futures.wait(futures)  # all four finish before the loop runs again
    assert await asyncio.gather(*waiters) == [0, 1, 2, 3]
    assert wakeups == 1


async def test_cancelling_the_waiter_cancels_work_not_started_yet():
    one = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        gate = threading.Event()
        busy = one.submit(gate.wait, 5)
        queued = one.submit(int, "1")
        bridge = CompletionBridge(asyncio.get_running_loop())
        waiter = bridge.wrap(queued)
        waiter.cancel()
        await asyncio.sleep(0)
        assert queued.cancelled()
        gate.set()
        assert busy.result(5) is True
    finally:
        one.shutdown(wait=True)


async def test_work_cancelled_in_the_pool_cancels_the_waiter():
    one = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    gate = threading.Event()
    one.submit(gate.wait, 5)
    queued = one.submit(int, "1")
    waiter = CompletionBridge(asyncio.get_running_loop()).wrap(queued)
    one.shutdown(wait=False, cancel_futures=True)
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiter, 5)
