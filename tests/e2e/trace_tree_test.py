"""One trace per run, across every hop (docs/operations.md, "Traces"): every process of the stack
exports its spans with its real OTLP/gRPC exporter to a small collector run by this test (a
TraceService server), the test process too (the SDK client's interceptor), and the test asserts the
span tree of a three-node run whose first node fails once and is retried:

    client SubmitRun > scheduler SubmitRun > compile, PutGraph (> result-store PutGraph), dispatch
    dispatch > task (attempt 1, error) > commit > apply > dispatch > task (attempt 2) > commit
      > apply > dispatch > task add_one (and its GetResults) > commit > apply > dispatch
      > task double > commit > apply
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from graflow import workflow
from graflow.cli.devstack import LocalStack
from tests.e2e.conftest import module_stack, wait_for
from tests.e2e.tasks import add_one, blob, double, flaky

CLIENT_SERVICE = "e2e-client"
SERVER = 2  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_SERVER
CLIENT = 3
STATUS_ERROR = 2


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, object]
    status: int

    @property
    def attempt(self) -> object:
        return self.attributes.get("graflow.attempt")

    @property
    def node(self) -> object:
        return self.attributes.get("graflow.node_id")


def _value(any_value: object) -> object:
    field = any_value.WhichOneof("value")  # type: ignore[attr-defined]
    return getattr(any_value, field) if field else None


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver keeping every span it is sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[Span] = []

    def Export(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(Span(
                        service=str(resource.get("service.name")), name=span.name, kind=span.kind,
                        trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        status=span.status.code,
                    ))
        with self._lock:
            self._spans += received
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[Span]:
        with self._lock:
            return list(self._spans)


@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[Collector, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    receiver = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver, port
    server.stop(None)


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, collector: tuple[Collector, int]) -> Iterator[LocalStack]:
    port = collector[1]
    env = {"OTEL_BSP_SCHEDULE_DELAY": "100"}  # export every 0.1 s, not every 5 s
    for role in ("SCHEDULER", "COORDINATOR", "RESULT_STORE", "WORKER"):
        env[f"GRAFLOW_{role}_TRACES_EXPORTER"] = "otlp"
        env[f"GRAFLOW_{role}_OTEL_ENDPOINT"] = f"127.0.0.1:{port}"
        env[f"GRAFLOW_{role}_OTEL_INSECURE"] = "true"
    # The test process is the SDK client: its provider is set before the client's first call.
    provider = TracerProvider(resource=Resource.create({"service.name": CLIENT_SERVICE}))
    exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    with module_stack(request, env=env) as stack:
        yield stack
    provider.shutdown()


def log_lines(stack: LocalStack, names: tuple[str, ...], event: str, run_id: str) -> list[dict[str, object]]:
    """The JSON log lines ``event`` of run ``run_id`` in the logs of processes ``names``."""
    lines = (line for name in names for line in stack.log_path(name).read_text().splitlines())
    events = (json.loads(line) for line in lines if line.startswith("{"))
    return [e for e in events if e.get("event") == event and e.get("run_id") == run_id]


class Tree:
    def __init__(self, spans: list[Span]) -> None:
        self.spans = spans
        self.by_id = {s.span_id: s for s in spans}

    def children(self, parent: Span, name: str | None = None) -> list[Span]:
        return [s for s in self.spans if s.parent_id == parent.span_id and name in (None, s.name)]

    def child(self, parent: Span, name: str, **attributes: object) -> Span:
        found = [s for s in self.children(parent, name)
                 if all(s.attributes.get(f"graflow.{k}") == v for k, v in attributes.items())]
        assert len(found) == 1, (
            f"expected one span {name!r} {attributes} under {parent.service}:{parent.name}, found "
            f"{[(s.service, s.name, s.attributes) for s in self.children(parent)]}")
        return found[0]


def test_a_runs_spans_form_one_tree_across_every_hop(client, stack: LocalStack, collector) -> None:
    receiver, _ = collector
    with workflow("traced-tree") as wf:
        flaky(task_id="source", fail_times=1) >> add_one >> double
    run = client.submit(wf)
    assert run.result(timeout=30) == 6  # attempt 2 of source returned 2: (2 + 1) * 2

    # Each process exports in its own batches: wait for every span the tree below expects.
    expected = {"dispatch": 4, "task": 4, "commit": 4, "apply": 4}

    def exported() -> bool:
        spans = receiver.spans()
        counts = {name: sum(1 for s in spans if s.attributes.get("graflow.run_id") == run.id
                            and s.name.split()[0] == name) for name in expected}
        on_result_store = {s.name for s in spans if s.service == "graflow-result-store"}
        return counts == expected and {"/graflow_api.v1.ResultStore/PutGraph",
                                       "/graflow_api.v1.ResultStore/GetResults"} <= on_result_store
    wait_for(exported, 30, f"the spans of the run: {expected}, and the result-store's")

    spans = receiver.spans()
    of_run = [s for s in spans if s.attributes.get("graflow.run_id") == run.id]
    trace_ids = {s.trace_id for s in of_run}
    assert len(trace_ids) == 1, f"the run's spans are in {len(trace_ids)} traces"
    tree = Tree([s for s in spans if s.trace_id in trace_ids])

    # The client's SubmitRun is the trace's root.
    roots = [s for s in tree.spans if not s.parent_id]
    assert [(r.service, r.name, r.kind) for r in roots] == [
        (CLIENT_SERVICE, "/graflow_api.v1.Scheduler/SubmitRun", CLIENT)]
    submit = tree.child(roots[0], "/graflow_api.v1.Scheduler/SubmitRun")
    assert (submit.service, submit.kind) == ("graflow-scheduler", SERVER)
    assert tree.child(submit, "compile").service == "graflow-scheduler"
    put_graph = tree.child(submit, "/graflow_api.v1.ResultStore/PutGraph")
    assert (put_graph.service, put_graph.kind) == ("graflow-scheduler", CLIENT)
    stored = tree.child(put_graph, "/graflow_api.v1.ResultStore/PutGraph")
    assert (stored.service, stored.kind) == ("graflow-result-store", SERVER)
    dispatch = tree.child(submit, "dispatch")

    # Each attempt: task > commit > apply > dispatch > the next attempt or node.
    tasks: dict[tuple[str, int], Span] = {}
    steps = [("source", 1, "task flaky"), ("source", 2, "task flaky"), ("add_one", 1, "task add_one"),
             ("double", 1, "task double")]
    for index, (node, attempt, name) in enumerate(steps):
        task = tree.child(dispatch, name, node_id=node, attempt=attempt)
        assert task.service == "graflow-worker"
        tasks[(node, attempt)] = task
        assert (task.status == STATUS_ERROR) == ((node, attempt) == ("source", 1)), task
        if node == "add_one":  # its upstream result, fetched in the run's trace
            fetch = tree.child(dispatch, "/graflow_api.v1.ResultStore/GetResults")
            assert fetch.service == "graflow-worker"
            fetched = tree.child(fetch, "/graflow_api.v1.ResultStore/GetResults")
            assert (fetched.service, fetched.kind) == ("graflow-result-store", SERVER)
        commit = tree.child(task, "commit", node_id=node, attempt=attempt)
        assert commit.service == "graflow-worker"
        apply = tree.child(commit, "apply", node_id=node, attempt=attempt)
        assert apply.service == "graflow-scheduler"
        if index + 1 < len(steps):
            dispatch = tree.child(apply, "dispatch")
            assert dispatch.service == "graflow-scheduler"
        else:
            assert tree.children(apply) == []  # the run's last outcome releases nothing

    # Log lines carry the ids of the span they were made in: the worker's in the failed attempt's
    # task span, the scheduler's "run ended" in the last outcome's apply span.
    [failed] = log_lines(stack, ("worker-0", "worker-1"), "task failed", run.id)
    assert (failed["trace_id"], failed["span_id"]) == (tasks[("source", 1)].trace_id,
                                                       tasks[("source", 1)].span_id)
    [ended] = log_lines(stack, ("scheduler",), "run ended", run.id)
    assert (ended["trace_id"], ended["span_id"]) == (apply.trace_id, apply.span_id)


def test_a_large_results_put_results_is_a_span_of_its_attempts_commit(
    client, stack: LocalStack, collector
) -> None:
    receiver, _ = collector
    with workflow("traced-large-result") as wf:
        blob(task_id="large", size=100_000)  # over the worker's INLINE_RESULT_MAX_BYTES: PutResults
    run = client.submit(wf)
    assert len(run.result(timeout=30)) == 100_000

    def commit_of_run() -> list[Span]:
        return [s for s in receiver.spans()
                if s.name == "commit" and s.attributes.get("graflow.run_id") == run.id]
    wait_for(lambda: len(commit_of_run()) == 1, 30, "the worker's commit span")
    [commit] = commit_of_run()
    wait_for(lambda: any(s.service == "graflow-result-store" and s.trace_id == commit.trace_id
                         and s.name.endswith("/PutResults") for s in receiver.spans()),
             10, "the result-store's PutResults span")
    tree = Tree([s for s in receiver.spans() if s.trace_id == commit.trace_id])
    put = tree.child(commit, "/graflow_api.v1.ResultStore/PutResults")
    assert (put.service, put.kind) == ("graflow-worker", CLIENT)
    stored = tree.child(put, "/graflow_api.v1.ResultStore/PutResults")
    assert (stored.service, stored.kind) == ("graflow-result-store", SERVER)
