"""``python -m graflow_coordinator`` / ``pants run services/coordinator``."""

from __future__ import annotations

import sys

import structlog

from graflow_runtime.lifecycle import ShutdownSignal, run_service
from graflow_runtime.logs import configure_logging
from graflow_runtime.redis_client import REDIS_UNAVAILABLE
from graflow_runtime.settings import SettingsError, load_settings
from graflow_runtime.telemetry import configure_tracing

from graflow_coordinator.app import create_app
from graflow_coordinator.settings import CoordinatorSettings

log = structlog.get_logger(__name__)


def main() -> None:
    try:
        settings = load_settings(CoordinatorSettings)
    except SettingsError as exc:
        sys.stderr.write(f"graflow coordinator: {exc}\n")
        raise SystemExit(2) from exc
    configure_logging("coordinator", settings.log_level, settings.log_format)
    flush_tracing = configure_tracing("coordinator", settings.traces_exporter, settings.otel_endpoint)

    async def serve(shutdown: ShutdownSignal) -> None:
        app = create_app(settings)
        try:
            await app.start()
            await shutdown.wait()
        finally:
            await app.stop()

    try:
        run_service(serve)
    except REDIS_UNAVAILABLE as exc:
        log.error("cannot reach redis; start it or set GRAFLOW_COORDINATOR_REDIS_URL", error=str(exc))
        raise SystemExit(1) from exc
    finally:
        flush_tracing()


if __name__ == "__main__":
    main()
