"""``python -m graflow_scheduler``: run the scheduler until SIGTERM/SIGINT."""

from __future__ import annotations

import structlog

from graflow_runtime.lifecycle import ShutdownSignal, run_service
from graflow_runtime.logs import configure_logging
from graflow_runtime.redis_client import REDIS_UNAVAILABLE
from graflow_runtime.settings import SettingsError, load_settings
from graflow_runtime.telemetry import configure_tracing

from graflow_scheduler.app import create_app
from graflow_scheduler.settings import SchedulerSettings

log = structlog.get_logger("graflow_scheduler")


async def serve(settings: SchedulerSettings, shutdown: ShutdownSignal) -> None:
    configure_logging("scheduler", settings.log_level, settings.log_format)
    flush_tracing = configure_tracing("scheduler", settings.traces_exporter, settings.otel_endpoint)
    try:
        app = create_app(settings)
        try:
            await app.start()
        except REDIS_UNAVAILABLE as exc:
            log.error("cannot reach redis at start-up", redis_url=settings.redis_url, error=str(exc))
            await app.stop()
            raise SystemExit(1) from exc
        await shutdown.wait()
        await app.stop()
    finally:
        flush_tracing()


def main() -> None:
    try:
        settings = load_settings(SchedulerSettings)
    except SettingsError as exc:
        raise SystemExit(f"graflow-scheduler: {exc}") from exc
    run_service(lambda shutdown: serve(settings, shutdown))


if __name__ == "__main__":
    main()
