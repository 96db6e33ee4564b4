"""The worker as a real process: ``python -m graflow_worker`` with SIGTERM drain."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

from graflow import payload

from graflow_worker.testing.services import (
    TASKS_MODULE,
    enqueue,
    envelope,
    eventually,
    pending_count,
    wait_outcomes,
)


def worker_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFLOW_WORKER_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.update({f"GRAFLOW_WORKER_{k.upper()}": v for k, v in values.items()})
    return env


async def spawn(stack, tmp_path, **settings: str) -> asyncio.subprocess.Process:
    """``python -m graflow_worker`` against the stack's doubles, logging to tmp_path/worker.log;
    returns once it registered."""
    env = worker_env(
        task_modules=TASKS_MODULE, redis_url=stack.redis_url,
        coordinator_address=stack.coordinator_server.address,
        result_store_address=stack.store_server.address, **settings,
    )
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - handed to the process
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "graflow_worker", env=env, stdout=log, stderr=log)
    finally:
        log.close()
    try:
        await eventually(lambda: stack.coordinator.registrations, timeout=30, what="registration")
    except BaseException:
        process.kill()
        await process.wait()
        raise
    return process


@contextlib.asynccontextmanager
async def worker_process(stack, tmp_path, **settings: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """:func:`spawn`, killed at the end unless it exited."""
    process = await spawn(stack, tmp_path, **settings)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def drain(process: asyncio.subprocess.Process) -> int:
    """SIGTERM, as a container stop sends; the exit code (within 20 s)."""
    process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(process.wait(), 20)


async def test_worker_process_serves_then_drains_on_sigterm(stack, tmp_path):
    async with worker_process(stack, tmp_path, worker_id="proc-worker", log_format="json") as process:
        await enqueue(stack.redis, envelope("r1", "a", "add", args={"a": 40, "b": 2}))
        [outcome] = await wait_outcomes(stack.redis, 1)
        assert outcome.worker_id == "proc-worker"
        # With the default INLINE_RESULT_MAX_BYTES the small result rides in the outcome.
        assert payload.decode(outcome.result.value) == 42
        assert stack.store.put_calls == 0
        assert await drain(process) == 0
    assert stack.coordinator.deregistrations == ["proc-worker"]
    assert await pending_count(stack.redis) == 0
    log = (tmp_path / "worker.log").read_text()
    assert '"worker_id": "proc-worker"' in log and "worker stopped" in log


def run_worker(**settings: str) -> subprocess.CompletedProcess[str]:
    """``python -m graflow_worker`` to its end (settings that stop it at start-up)."""
    return subprocess.run([sys.executable, "-m", "graflow_worker"], env=worker_env(**settings),
                          capture_output=True, text=True, timeout=60)


def test_worker_without_task_modules_exits_with_a_clear_message():
    done = run_worker()
    assert done.returncode == 2
    assert "GRAFLOW_WORKER_TASK_MODULES" in done.stderr


def test_worker_with_a_broken_task_module_exits_naming_it():
    done = run_worker(task_modules="graflow_worker.no_such_module")
    assert done.returncode == 2
    assert "'graflow_worker.no_such_module' failed to import" in done.stderr


async def test_worker_process_exits_after_the_grace_period_leaving_stuck_work_pending(stack, tmp_path):
    async with worker_process(stack, tmp_path, worker_id="proc-stuck", shutdown_grace_s="0.3") as process:
        await enqueue(stack.redis, envelope("r1", "stuck", "hold", args={"key": "never"}))
        beats = stack.coordinator.heartbeats
        await eventually(lambda: beats and beats[-1].in_flight == 1, what="the task to be in flight")
        assert await drain(process) == 0
    assert await pending_count(stack.redis) == 1
    assert stack.coordinator.deregistrations == ["proc-stuck"]
    assert "task threads still running at exit" in (tmp_path / "worker.log").read_text()


def test_worker_with_an_unusable_signing_key_exits_naming_the_variable_and_not_the_secret():
    done = run_worker(task_modules=TASKS_MODULE, signing_keys="k1:abcdef")
    assert done.returncode == 2
    assert "GRAFLOW_WORKER_SIGNING_KEYS[0] (k1): the secret is 3 bytes; at least 32" in done.stderr
    assert "abcdef" not in done.stderr
