"""``python -m graflow_worker`` / ``pants run services/worker``: the worker as a process.

Start-up, signals and exit codes: ``graflow_runtime.service``; the worker's part is loading its
task registry (a task module that does not load is bad configuration: exit code 2) and wiring
:class:`~graflow_worker.worker.Worker`. SIGTERM drains, a second signal exits at once.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

import redis.asyncio as aioredis
import structlog

from graflow_runtime.service import Service, service_main

from graflow_worker.registry import load_registry
from graflow_worker.runner import TASK_THREAD_PREFIX
from graflow_worker.settings import WorkerSettings
from graflow_worker.worker import Worker

log = structlog.get_logger("graflow_worker")


def build(settings: WorkerSettings, redis: aioredis.Redis) -> Worker:
    # Task modules of the project the worker is started in are importable (as with `python -m`),
    # also from a PEX, which does not put the working directory on sys.path.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    return Worker(settings, load_registry(settings.task_modules), redis)


SERVICE = Service("worker", WorkerSettings, build)


def main() -> None:
    service_main(SERVICE)
    _exit_without_waiting_for_stuck_tasks()


def _exit_without_waiting_for_stuck_tasks() -> None:
    """Threads of tasks that outlived their timeout or the grace period can't be stopped, and the
    interpreter would wait for them at exit: leave them behind (their deliveries stay pending)."""
    stuck = [t for t in threading.enumerate() if t.name.startswith(TASK_THREAD_PREFIX)]
    for thread in stuck:
        thread.join(timeout=0.1)
    stuck = [t for t in stuck if t.is_alive()]
    if stuck:
        log.warning("task threads still running at exit; not waiting for them", threads=len(stuck))
        logging.shutdown()
        os._exit(0)


if __name__ == "__main__":
    main()
