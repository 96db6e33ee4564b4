"""structlog configured once per process: JSON when not on a terminal, context from contextvars.

Bind run/node/attempt/worker ids with ``structlog.contextvars.bound_contextvars`` around the work;
every line then carries them, plus the current OpenTelemetry trace and span ids.
"""

from __future__ import annotations

import logging
import sys

import structlog
from opentelemetry import trace


def _add_trace_ids(_logger: object, _name: str, event: dict) -> dict:
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event.setdefault("span_id", format(ctx.span_id, "016x"))
    return event


def configure_logging(service: str, level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog and route stdlib logging (grpc, redis) through the same renderer."""
    json_output = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_ids,
    ]
    renderer = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    final = [structlog.processors.dict_tracebacks, renderer] if json_output else [renderer]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)
