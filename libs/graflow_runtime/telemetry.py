"""OpenTelemetry tracing: one provider per process, gRPC instrumented by interceptors, and the
trace context carried inside task envelopes so a run is one trace across all services.

The gRPC interceptors (a span per call on both sides, ~0.2 ms each) are installed only when an
exporter is configured (:func:`tracing_enabled`): without one the spans would go nowhere. The trace
context inside envelopes does not depend on them: the scheduler starts each run's trace itself
(:func:`ensure_trace`), so logs of all services carry a run's trace id either way."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, MutableMapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

_exporting = False


def tracing_enabled() -> bool:
    """True once :func:`configure_tracing` installed an exporter ("console" or "otlp")."""
    return _exporting


def configure_tracing(service: str, exporter: str, endpoint: str) -> Callable[[], None]:
    """Install a tracer provider for ``service``; returns the function that flushes and stops it."""
    global _exporting  # noqa: PLW0603 - one provider per process
    _exporting = exporter in ("console", "otlp")
    provider = TracerProvider(resource=Resource.create({"service.name": f"graflow-{service}"}))
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    trace.set_tracer_provider(provider)
    return provider.shutdown


@contextlib.contextmanager
def ensure_trace(name: str, attributes: Mapping[str, str] | None = None) -> Iterator[None]:
    """Within the block, a trace is current: the caller's (e.g. the server span of the gRPC
    interceptor), else a new span ``name`` that starts one."""
    if trace.get_current_span().get_span_context().is_valid:
        yield
        return
    with trace.get_tracer("graflow_runtime").start_as_current_span(name, attributes=attributes):
        yield


def inject_trace_context(carrier: MutableMapping[str, str]) -> None:
    """Write the current trace context (W3C traceparent) into an envelope's map."""
    propagate.inject(carrier)


_EXTRACTED: dict[tuple[tuple[str, str], ...], otel_context.Context] = {}
_EXTRACTED_MAX = 1024


def attach_trace_context(carrier: Mapping[str, str]) -> object:
    """Make the trace context from an envelope current; returns a token for :func:`detach`.

    Envelopes of one run mostly carry the same context, so parsed contexts (immutable) are kept in
    a small cache instead of parsing ``traceparent`` for every task."""
    key = tuple(sorted(carrier.items()))
    context = _EXTRACTED.get(key)
    if context is None:
        # From an empty context (not the current one), so the cached result depends on the carrier only.
        context = propagate.extract(dict(carrier), context=otel_context.Context())
        if len(_EXTRACTED) >= _EXTRACTED_MAX:
            _EXTRACTED.clear()
        _EXTRACTED[key] = context
    return otel_context.attach(context)


def detach(token: object) -> None:
    otel_context.detach(token)  # type: ignore[arg-type]
