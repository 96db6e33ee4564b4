"""Prometheus metrics of every Graflow process (docs/operations.md lists them all).

One registry per process (prometheus-client's default one, which also carries the ``process_*``
and ``python_*`` collectors), served on ``/metrics`` by :class:`MetricsServer` when the service's
``METRICS_PORT`` setting is not 0; :func:`graflow_runtime.service.service_main` starts it before the
service's parts and stops it after them. The metrics several services record are defined here;
a service's own ones are defined in its package with the same registry.

Labels stay bounded: task types and queues (names an operator chose), gRPC methods and codes,
downstream names. Never a run, node or worker id.
"""

from __future__ import annotations

import threading
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
import prometheus_client
import structlog
from prometheus_client import Counter, Gauge, Histogram

log = structlog.get_logger(__name__)

REGISTRY = prometheus_client.REGISTRY

# Seconds: from a few milliseconds (a tiny task, a local RPC) up to minutes (a long task).
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0
)
# Items in one batch (outcomes applied, deliveries dispatched).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

TASK_LABELS = ("task_type", "queue")

# Recorded by the worker, per attempt it ran.
TASKS_STARTED = Counter(
    "graflow_tasks_started_total", "Task attempts a worker started.", TASK_LABELS, registry=REGISTRY
)
TASKS_SUCCEEDED = Counter(
    "graflow_tasks_succeeded_total", "Task attempts that succeeded.", TASK_LABELS, registry=REGISTRY
)
TASKS_FAILED = Counter(
    "graflow_tasks_failed_total",
    "Task attempts that failed (a timed-out attempt counts here and in graflow_tasks_timed_out_total).",
    TASK_LABELS,
    registry=REGISTRY,
)
TASKS_TIMED_OUT = Counter(
    "graflow_tasks_timed_out_total", "Task attempts stopped by their timeout.", TASK_LABELS, registry=REGISTRY
)
TASK_DURATION = Histogram(
    "graflow_task_duration_seconds",
    "Run time of a task attempt on its worker, whatever its end.",
    TASK_LABELS,
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
TASK_QUEUE_WAIT = Histogram(
    "graflow_task_queue_wait_seconds",
    "From the envelope's enqueue (enqueued_at_ms) to the start of its attempt on a worker.",
    TASK_LABELS,
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
# Recorded by the scheduler, which decides retries.
TASKS_RETRIED = Counter(
    "graflow_tasks_retried_total",
    "Failed attempts the scheduler retried (a new attempt dispatched, now or after its backoff).",
    TASK_LABELS,
    registry=REGISTRY,
)
# Recorded where deliveries are moved to the dead letters: the coordinator (poison messages,
# undecodable entries of dead workers) and the worker (entries it cannot decode or verify).
TASKS_DEAD_LETTERED = Counter(
    "graflow_tasks_dead_lettered_total",
    "Deliveries moved to the dead letters (poison messages, undecodable or badly signed entries).",
    ("queue",),
    registry=REGISTRY,
)


class MetricsServer:
    """``/metrics`` over HTTP on a thread of its own (prometheus-client's WSGI server)."""

    def __init__(self, address: str, port: int) -> None:
        self.address = address
        self.requested_port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port bound by :meth:`start`."""
        if self._server is None:
            raise RuntimeError("the metrics server is not started")
        return int(self._server.server_port)

    def start(self) -> None:
        """Bind and serve; raises OSError when the address cannot be bound."""
        self._server, self._thread = prometheus_client.start_http_server(
            self.requested_port, addr=self.address, registry=REGISTRY
        )
        log.info("metrics served", address=f"{self.address}:{self.port}", path="/metrics")

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

# Recorded by whoever dispatches (graflow_runtime.dispatch): the scheduler for the nodes it makes
# ready, the coordinator for its Dispatch RPC.
DISPATCH_BATCH_SIZE = Histogram(
    "graflow_dispatch_batch_size",
    "Deliveries in one dispatch (one pipelined round trip to Redis).",
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
DISPATCH_SECONDS = Histogram(
    "graflow_dispatch_seconds",
    "Time to dispatch one batch of deliveries to the queue streams.",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)

# gRPC, per full method name ("/graflow.api.v1.Scheduler/SubmitRun") and status code name.
GRPC_SERVER_SECONDS = Histogram(
    "graflow_grpc_server_handled_seconds",
    "Time a gRPC call took on this server, until its status (a stream: until its end).",
    ("method", "code"),
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
GRPC_CLIENT_SECONDS = Histogram(
    "graflow_grpc_client_handled_seconds",
    "Time a unary gRPC call this process made took, until its status.",
    ("method", "code"),
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
# Circuit breakers (graflow_runtime.grpc_client.Downstream), per downstream service name.
BREAKER_STATE = Gauge(
    "graflow_breaker_state",
    "State of the circuit breaker towards a downstream: 0 closed, 1 half-open, 2 open.",
    ("downstream",),
    registry=REGISTRY,
)
BREAKER_TRIPS = Counter(
    "graflow_breaker_trips_total",
    "Times the circuit breaker towards a downstream opened.",
    ("downstream",),
    registry=REGISTRY,
)
BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}
# Redis errors this process met, by exception class (ConnectionError, TimeoutError, ResponseError...).
REDIS_ERRORS = Counter(
    "graflow_redis_errors_total",
    "Redis commands that failed with an error, by its exception class.",
    ("error",),
    registry=REGISTRY,
)


def status_name(code: Any) -> str:
    """The name of a gRPC status code as grpc reports it (a ``grpc.StatusCode``, or the integer a
    servicer context holds); "OK" for None (no status set: the handler returned normally)."""
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.name
    return "UNKNOWN"
