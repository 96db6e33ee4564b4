"""The SDK's calls are traced once the application sets a tracer provider, and only then (a test
file runs in its own process: the global provider is set here once)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from graflow._transport import Endpoint, tracing_configured
from graflow_api.v1 import scheduler_pb2


class _Scheduler:
    """A Scheduler that answers GetRun and keeps the traceparent each call carried ("" if none)."""

    def __init__(self) -> None:
        self.traceparents: list[str] = []
        self._lock = threading.Lock()

    def get_run(self, request: scheduler_pb2.GetRunRequest, context: grpc.ServicerContext
                ) -> scheduler_pb2.Run:
        with self._lock:
            self.traceparents.append(dict(context.invocation_metadata()).get("traceparent", ""))
        return scheduler_pb2.Run(run_id=request.run_id)


@pytest.fixture
def scheduler() -> Iterator[tuple[_Scheduler, str]]:
    answering = _Scheduler()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("graflow_api.v1.Scheduler", {
        "GetRun": grpc.unary_unary_rpc_method_handler(
            answering.get_run, request_deserializer=scheduler_pb2.GetRunRequest.FromString,
            response_serializer=scheduler_pb2.Run.SerializeToString),
    })])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield answering, f"127.0.0.1:{port}"
    server.stop(None)


def test_calls_are_traced_only_once_the_application_sets_a_tracer_provider(scheduler) -> None:
    answering, address = scheduler
    request = scheduler_pb2.GetRunRequest(run_id="r1")

    assert not tracing_configured()  # the OpenTelemetry API alone: nothing intercepted, nothing sent
    untraced = Endpoint("scheduler", address, auth_token="", timeout=5)
    assert untraced.call("GetRun", request).run_id == "r1"
    assert answering.traceparents == [""]

    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    trace.set_tracer_provider(provider)
    assert tracing_configured()
    traced = Endpoint("scheduler", address, auth_token="", timeout=5)
    with trace.get_tracer("app").start_as_current_span("the application's work") as outer:
        assert traced.call("GetRun", request).run_id == "r1"
    [call, work] = exported.get_finished_spans()
    assert (call.name, call.kind, call.parent.span_id) == (
        "/graflow_api.v1.Scheduler/GetRun", trace.SpanKind.CLIENT, outer.get_span_context().span_id)
    # The call's own context travels to the service: its spans join the application's trace.
    ids = call.get_span_context()
    assert answering.traceparents[1].startswith(f"00-{ids.trace_id:032x}-{ids.span_id:016x}-")
    assert work.name == "the application's work"
