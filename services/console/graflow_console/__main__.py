"""``python -m graflow_console`` / ``pants run services/console``: the console as a process.

Settings -> logging -> tracing -> TLS files and exposure checked -> uvicorn serving HTTPS when
TLS_CERT_FILE/TLS_KEY_FILE are set (plain HTTP otherwise, refused on a non-loopback address unless
INSECURE). uvicorn handles SIGTERM/SIGINT: it stops accepting connections and gives open requests
SHUTDOWN_GRACE_S to finish (live event streams are closed then). Exit codes as the other services
(docs/configuration.md): 2 for bad configuration, 1 when it cannot serve.
"""

from __future__ import annotations

import signal
import ssl
import sys
from types import FrameType
from typing import NoReturn

import structlog
import uvicorn

from graflow_runtime.errors import ConfigurationError
from graflow_runtime.lifecycle import EXIT_CONFIGURATION, EXIT_FAILED
from graflow_runtime.logs import configure_logging
from graflow_runtime.metrics import MetricsServer
from graflow_runtime.settings import SettingsError, load_settings
from graflow_runtime.telemetry import configure_tracing
from graflow_runtime.tls import Exposure, check_exposure, files_of

from graflow_console.app import create_app
from graflow_console.settings import ConsoleSettings

log = structlog.get_logger(__name__)
PREFIX = "GRAFLOW_CONSOLE_"


def uvicorn_config(settings: ConsoleSettings) -> uvicorn.Config:
    """The server of ``settings``; raises ConfigurationError for bad TLS files or an unprotected
    non-loopback address."""
    # Reads and checks the PEM files (named by their variables), as the gRPC services do.
    files_of(settings).channel_credentials()
    https = files_of(settings).server_credentials(
        client_auth=settings.tls_client_auth, client_auth_name=PREFIX + "TLS_CLIENT_AUTH"
    ) is not None
    check_exposure(
        Exposure(
            address=f"{settings.host}:{settings.port}",
            tls=https,
            # The console holds no credential but carries people's tokens: only TLS protects them.
            credentials=False,
            insecure=settings.insecure,
            tls_variables=f"{PREFIX}TLS_CERT_FILE and {PREFIX}TLS_KEY_FILE",
            credentials_variable=f"{PREFIX}TLS_CERT_FILE",
            insecure_variable=f"{PREFIX}INSECURE",
        )
    )
    tls: dict[str, object] = {}
    if https:
        tls = {"ssl_certfile": settings.tls_cert_file, "ssl_keyfile": settings.tls_key_file}
        if settings.tls_ca_file:
            tls["ssl_ca_certs"] = settings.tls_ca_file
        if settings.tls_client_auth:
            tls["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop=settings.event_loop,
        log_config=None,  # uvicorn's loggers go through structlog's handler (graflow_runtime.logs)
        access_log=settings.log_level == "debug",
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        server_header=False,
        **tls,  # type: ignore[arg-type]
    )


def main() -> None:
    try:
        settings = load_settings(ConsoleSettings)
    except SettingsError as exc:
        configure_logging("console")
        _exit_misconfigured(exc)
    configure_logging("console", settings.log_level, settings.log_format)
    try:
        flush_tracing = configure_tracing(
            "console", settings.traces_exporter, settings.otel_endpoint, ca_file=settings.otel_ca_file,
            insecure=settings.otel_insecure, names=(PREFIX + "OTEL_CA_FILE", PREFIX + "OTEL_INSECURE"))
        config = uvicorn_config(settings)
    except ConfigurationError as exc:
        _exit_misconfigured(exc)
    metrics = None
    if settings.metrics_port:
        metrics = MetricsServer(settings.metrics_address, settings.metrics_port)
    try:
        if metrics is not None:
            metrics.start()
        scheme = "https" if settings.https else "http"
        log.info("console serving", url=f"{scheme}://{settings.host}:{settings.port}/")
        server = uvicorn.Server(config)
        # uvicorn handles SIGTERM/SIGINT while it serves, then raises the signal again for the
        # handler it found installed: this one, so that a clean stop exits 0 as every service does.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _stopped)
        server.run()
        if not server.started:
            log.error("could not start", error=f"cannot serve on {settings.host}:{settings.port}")
            raise SystemExit(EXIT_FAILED)
    except OSError as exc:
        log.error("could not start", error=str(exc))
        raise SystemExit(EXIT_FAILED) from exc
    finally:
        if metrics is not None:
            metrics.stop()
        flush_tracing()


def _stopped(sig: int, frame: FrameType | None) -> None:
    log.info("console stopped", signal=signal.Signals(sig).name)


def _exit_misconfigured(exc: ConfigurationError) -> NoReturn:
    sys.stderr.write(f"graflow-console: {exc}\n")
    log.error("bad configuration", error=str(exc))
    raise SystemExit(EXIT_CONFIGURATION) from exc


if __name__ == "__main__":
    main()
