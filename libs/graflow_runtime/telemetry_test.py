"""Trace context in envelopes, and tracing interceptors only when spans go somewhere."""

from __future__ import annotations

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from graflow_runtime import grpc_client, grpc_server, telemetry
from graflow_runtime.tls import TlsFileError

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def current_ids() -> tuple[int, int]:
    ctx = trace.get_current_span().get_span_context()
    return ctx.trace_id, ctx.span_id


def test_an_envelopes_context_becomes_current_and_is_carried_on():
    for _ in range(2):  # the second time from the cache of parsed contexts
        token = telemetry.attach_trace_context({"traceparent": PARENT})
        try:
            assert current_ids() == (TRACE_ID, 0xB7AD6B7169203331)
            carrier: dict[str, str] = {}
            telemetry.inject_trace_context(carrier)
            assert carrier["traceparent"] == PARENT
        finally:
            telemetry.detach(token)
    assert not trace.get_current_span().get_span_context().is_valid


def test_different_contexts_are_not_confused():
    other = "00-11111111111111111111111111111111-2222222222222222-01"
    cases = (({"traceparent": PARENT}, TRACE_ID), ({"traceparent": other}, int("1" * 32, 16)))
    for carrier, expected in cases:
        token = telemetry.attach_trace_context(carrier)
        try:
            assert current_ids()[0] == expected
        finally:
            telemetry.detach(token)
    token = telemetry.attach_trace_context({})
    try:
        assert not trace.get_current_span().get_span_context().is_valid
    finally:
        telemetry.detach(token)


def test_ensure_trace_keeps_the_current_trace():
    span = NonRecordingSpan(SpanContext(TRACE_ID, 0x1234, is_remote=False, trace_flags=TraceFlags(1)))
    with trace.use_span(span), telemetry.ensure_trace("graflow.run"):
        assert current_ids() == (TRACE_ID, 0x1234)


class _Passthrough(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        return await continuation(handler_call_details)


async def test_tracing_interceptors_are_installed_only_with_an_exporter(monkeypatch):
    made: list[str] = []
    monkeypatch.setattr(grpc_client, "aio_client_interceptors", lambda: made.append("client") or [])
    monkeypatch.setattr(
        grpc_server, "aio_server_interceptor", lambda **_: made.append("server") or _Passthrough()
    )
    assert not telemetry.tracing_enabled()  # configure_tracing was not called with an exporter
    for exporting, expected in ((False, []), (True, ["client", "server"])):
        monkeypatch.setattr(telemetry, "_exporting", exporting)
        made.clear()
        await grpc_client.open_channel("127.0.0.1:1").close()
        handle = grpc_server.create_server("127.0.0.1:0", [])
        await handle.server.stop(None)
        assert made == expected


def test_a_batchs_spans_are_children_of_their_own_items_contexts(monkeypatch):
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    monkeypatch.setattr(trace, "get_tracer", provider.get_tracer)
    other = "00-11111111111111111111111111111111-2222222222222222-01"
    carriers = [{"traceparent": PARENT}, {"traceparent": other}]

    spans = telemetry.SpanBatch()  # without an exporter: no span, the carrier passed on as is
    assert [spans.child("apply", c) for c in carriers] == carriers
    spans.end()
    assert exported.get_finished_spans() == ()

    monkeypatch.setattr(telemetry, "_exporting", True)
    children = [spans.child("apply", c, {"graflow.node_id": "a"}) for c in carriers]
    assert exported.get_finished_spans() == ()  # ended together, by end()
    spans.end()
    finished = exported.get_finished_spans()
    assert [(s.name, s.context.trace_id, s.parent.span_id) for s in finished] == [
        ("apply", TRACE_ID, 0xB7AD6B7169203331), ("apply", int("1" * 32, 16), int("2" * 16, 16))]
    # Each returned carrier names its new span, so what carries it on is the span's child.
    assert children == [
        {"traceparent": f"00-{s.context.trace_id:032x}-{s.context.span_id:016x}-01"} for s in finished]


def test_the_otlp_exporter_refuses_contradicting_or_unreadable_tls_settings(tmp_path):
    names = ("GRAFLOW_SCHEDULER_OTEL_CA_FILE", "GRAFLOW_SCHEDULER_OTEL_INSECURE")
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate")
    contradiction = "GRAFLOW_SCHEDULER_OTEL_INSECURE .* GRAFLOW_SCHEDULER_OTEL_CA_FILE"
    with pytest.raises(TlsFileError, match=contradiction):
        telemetry._otlp_exporter("127.0.0.1:4317", str(ca), True, names)
    with pytest.raises(TlsFileError, match="GRAFLOW_SCHEDULER_OTEL_CA_FILE"):
        telemetry._otlp_exporter("127.0.0.1:4317", str(tmp_path / "missing.pem"), False, names)
    with pytest.raises(TlsFileError, match="GRAFLOW_SCHEDULER_OTEL_CA_FILE"):
        telemetry._otlp_exporter("127.0.0.1:4317", str(ca), False, names)
