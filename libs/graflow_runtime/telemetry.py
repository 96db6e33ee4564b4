"""OpenTelemetry tracing: one provider per process, gRPC instrumented by interceptors, and the
trace context carried inside task envelopes so a run is one trace across all services."""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter


def configure_tracing(service: str, exporter: str, endpoint: str) -> Callable[[], None]:
    """Install a tracer provider for ``service``; returns the function that flushes and stops it."""
    provider = TracerProvider(resource=Resource.create({"service.name": f"graflow-{service}"}))
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    trace.set_tracer_provider(provider)
    return provider.shutdown


def inject_trace_context(carrier: MutableMapping[str, str]) -> None:
    """Write the current trace context (W3C traceparent) into an envelope's map."""
    propagate.inject(carrier)


def attach_trace_context(carrier: Mapping[str, str]) -> object:
    """Make the trace context from an envelope current; returns a token for :func:`detach`."""
    return otel_context.attach(propagate.extract(dict(carrier)))


def detach(token: object) -> None:
    otel_context.detach(token)  # type: ignore[arg-type]
