"""``python -m graflow_worker`` / ``pants run services/worker``.

Settings -> logging and tracing -> task registry -> :class:`~graflow_worker.worker.Worker` under
:func:`graflow_runtime.lifecycle.run_service` (SIGTERM drains, a second signal exits at once).
"""

from __future__ import annotations

import logging
import os
import sys
import threading

import structlog

from graflow_runtime.lifecycle import ShutdownSignal, run_service
from graflow_runtime.logs import configure_logging
from graflow_runtime.settings import SettingsError, load_settings
from graflow_runtime.telemetry import configure_tracing

from graflow_worker.registry import RegistryError, load_registry
from graflow_worker.runner import TASK_THREAD_PREFIX
from graflow_worker.settings import WorkerSettings
from graflow_worker.worker import Worker

log = structlog.get_logger("graflow_worker")


def main() -> None:
    try:
        settings = load_settings(WorkerSettings)
    except SettingsError as exc:
        sys.exit(f"graflow-worker: {exc}")
    configure_logging("worker", settings.log_level, settings.log_format)
    flush_traces = configure_tracing("worker", settings.traces_exporter, settings.otel_endpoint)
    # Task modules of the project the worker is started in are importable (as with `python -m`),
    # also from a PEX, which does not put the working directory on sys.path.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        registry = load_registry(settings.task_modules)
    except RegistryError as exc:
        log.error("cannot load the task registry", error=str(exc))
        sys.exit(f"graflow-worker: {exc}")

    async def serve(shutdown: ShutdownSignal) -> None:
        await Worker(settings, registry).run(shutdown.event)

    try:
        run_service(serve)
    finally:
        flush_traces()
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
