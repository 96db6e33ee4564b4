"""``python -m graflow_result_store``: run the result-store until SIGTERM/SIGINT.

Start-up: settings -> logging and tracing -> Redis (durability check) -> server -> SERVING.
Shutdown runs it backwards: NOT_SERVING, stop with grace, close Redis, flush tracing.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import structlog

from graflow_runtime.lifecycle import ShutdownSignal, run_service
from graflow_runtime.logs import configure_logging
from graflow_runtime.redis_client import REDIS_UNAVAILABLE, check_durability, connect
from graflow_runtime.settings import SettingsError, load_settings
from graflow_runtime.telemetry import configure_tracing
from graflow_runtime.version import __version__

from graflow_result_store.app import create_app
from graflow_result_store.settings import ResultStoreSettings

SERVICE = "result-store"
log = structlog.get_logger("graflow_result_store")


class RedisUnreachable(RuntimeError):
    """Redis did not answer at start-up; the message says where and how to fix it."""


def redacted(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


async def serve(shutdown: ShutdownSignal, settings: ResultStoreSettings) -> None:
    flush_tracing = configure_tracing(SERVICE, settings.traces_exporter, settings.otel_endpoint)
    redis = connect(settings.redis_url)
    try:
        try:
            await check_durability(redis)
        except REDIS_UNAVAILABLE as exc:
            raise RedisUnreachable(
                f"cannot reach Redis at {redacted(settings.redis_url)} ({exc}); start it or set "
                "GRAFLOW_RESULT_STORE_REDIS_URL"
            ) from exc
        app = create_app(settings, redis)
        await app.start()
        log.info(
            "result-store listening", version=__version__, port=app.port, address=settings.listen_address
        )
        await shutdown.wait()
        log.info("result-store stopping", grace_s=settings.shutdown_grace_s)
        await app.stop()
    finally:
        await redis.aclose()
        flush_tracing()
    log.info("result-store stopped")


def main() -> None:
    try:
        settings = load_settings(ResultStoreSettings)
    except SettingsError as exc:
        configure_logging(SERVICE)
        log.error("bad settings", error=str(exc))
        raise SystemExit(2) from exc
    configure_logging(SERVICE, settings.log_level, settings.log_format)

    async def service_main(shutdown: ShutdownSignal) -> None:
        await serve(shutdown, settings)

    try:
        run_service(service_main)
    except RedisUnreachable as exc:
        log.error("result-store failed to start", error=str(exc))
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
