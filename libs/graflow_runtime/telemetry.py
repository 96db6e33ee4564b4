"""OpenTelemetry tracing: one provider per process, gRPC instrumented by interceptors, and the
trace context carried inside task envelopes so a run is one trace across all services.

The gRPC interceptors (a span per call on both sides, ~0.2 ms each) are installed only when an
exporter is configured (:func:`tracing_enabled`): without one the spans would go nowhere. The trace
context inside envelopes does not depend on them: the scheduler starts each run's trace itself
(:func:`ensure_trace`), so logs of all services carry a run's trace id either way.

Across the Redis hops the context travels in envelopes (``TaskEnvelope.trace_context``: the span
that dispatched the attempt) and outcomes (``TaskOutcome.trace_context``: the worker's commit
span); batched work gives each item its own span in its own trace (:class:`SpanBatch`). The span
tree of a run is described in docs/operations.md, "Traces"."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, MutableMapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from graflow_runtime.tls import TlsFileError, TlsFiles

_exporting = False


def tracing_enabled() -> bool:
    """True once :func:`configure_tracing` installed an exporter ("console" or "otlp")."""
    return _exporting


def configure_tracing(
    service: str, exporter: str, endpoint: str, *, ca_file: str = "", insecure: bool = False,
    names: tuple[str, str] = ("otel_ca_file", "otel_insecure"),
) -> Callable[[], None]:
    """Install a tracer provider for ``service``; returns the function that flushes and stops it.

    "otlp" exports over gRPC to ``endpoint`` (``host:port``) with TLS, verified against ``ca_file``
    (else the system's CAs), or in plaintext with ``insecure``. ``names``: how the CA file and the
    insecure flag are named in errors (their environment variables). Raises ConfigurationError
    (TlsFileError) for an unreadable CA, or a CA together with ``insecure``."""
    global _exporting  # noqa: PLW0603 - one provider per process
    provider = TracerProvider(resource=Resource.create({"service.name": f"graflow-{service}"}))
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(endpoint, ca_file, insecure, names)))
    _exporting = exporter in ("console", "otlp")
    trace.set_tracer_provider(provider)
    return provider.shutdown


def _otlp_exporter(endpoint: str, ca_file: str, insecure: bool, names: tuple[str, str]) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    ca_name, insecure_name = names
    if insecure and ca_file:
        raise TlsFileError(f"{insecure_name} (plaintext) and {ca_name} (TLS) contradict each other: set one")
    credentials = TlsFiles(ca_file, ca_name=ca_name).channel_credentials() if ca_file else None
    return OTLPSpanExporter(endpoint=endpoint, insecure=insecure, credentials=credentials)


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


def _context_of(carrier: Mapping[str, str]) -> otel_context.Context:
    """The context a carrier (an envelope's or an outcome's map) names.

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
    return context


def attach_trace_context(carrier: Mapping[str, str]) -> object:
    """Make the trace context from an envelope current; returns a token for :func:`detach`."""
    return otel_context.attach(_context_of(carrier))


def detach(token: object) -> None:
    otel_context.detach(token)  # type: ignore[arg-type]


@contextlib.contextmanager
def trace_context(carrier: Mapping[str, str]) -> Iterator[None]:
    """Within the block, the trace context of ``carrier`` is current (so a gRPC call made in it is a
    span of that trace: a worker's GetResults and PutResults)."""
    token = attach_trace_context(carrier)
    try:
        yield
    finally:
        detach(token)


def span(
    name: str, attributes: Mapping[str, str | int] | None = None
) -> contextlib.AbstractContextManager[object]:
    """A span ``name`` around the block, child of the current one; none without an exporter (it
    would go nowhere)."""
    if not _exporting:
        return contextlib.nullcontext()
    return trace.get_tracer("graflow_runtime").start_as_current_span(name, attributes=attributes)


class SpanBatch:
    """The spans of the items of one batch, each the child of its own item's trace context (an
    outcome's apply in the scheduler, an attempt's commit in a worker: one batch serves several
    runs, so several traces), ended together when the batch's work is done (:meth:`end`).

    Without an exporter no span is made: :meth:`child` returns the carrier it was given, so the
    trace context is passed on unchanged (logs still carry the run's trace id)."""

    def __init__(self) -> None:
        self._spans: list[trace.Span] = []

    def child(self, name: str, carrier: Mapping[str, str],
              attributes: Mapping[str, str | int] | None = None) -> Mapping[str, str]:
        """Start span ``name``, child of ``carrier``'s context; returns the carrier of the new span."""
        if not _exporting:
            return carrier
        started = trace.get_tracer("graflow_runtime").start_span(
            name, context=_context_of(carrier), attributes=attributes)
        self._spans.append(started)
        out: dict[str, str] = {}
        propagate.inject(out, context=trace.set_span_in_context(started))
        return out

    def end(self) -> None:
        for started in self._spans:
            started.end()
        self._spans.clear()
