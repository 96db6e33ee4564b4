"""Channel and server options shared by every gRPC endpoint of Graflow, and the service config of
every client channel (load balancing over replicas, retries of idempotent calls)."""

from __future__ import annotations

import json
from typing import Any

from graflow_runtime.addresses import channel_target

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect quickly after a peer restarts (the default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]

SERVER_OPTIONS = [
    *CHANNEL_OPTIONS,
    # Clients ping every 20 s (keepalive_time_ms above); the server's default minimum interval
    # between pings without data is 5 minutes, so it answered them with GOAWAY "too_many_pings"
    # and dropped the connection (calls in flight failed UNAVAILABLE and reconnects cost latency).
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    # gRPC sets SO_REUSEPORT by default: a second server on a taken port started "fine" and took a
    # share of the connections (seen in tests: a scheduler answering another stack's result-store
    # calls with UNIMPLEMENTED). A taken port must fail the start instead.
    ("grpc.so_reuseport", 0),
]

# The calls that gRPC retries on UNAVAILABLE (a replica died or went away before answering): those
# whose repetition has the effect of one call (docs/architecture.md, "Replicas", says why each is).
# Left out: ChannelSet/ChannelDelete/ChannelUpdate (a repeat could undo a write made in between,
# report nothing deleted, or append twice), HeartbeatStream (the worker reopens it itself),
# ReplayDeadLetters (a repeat could replay a letter dead-lettered again in between).
IDEMPOTENT_METHODS: dict[str, tuple[str, ...]] = {
    "graflow_api.v1.Scheduler": (
        "SubmitRun",  # every Graflow caller sends an idempotency key (the SDK makes one)
        "WaitRun",
        "GetRun",
        "ListRuns",
        "WatchRun",  # before its first event; after it, the SDK resumes from its cursor
        "CancelRun",
        "ListFeedback",
        "GetFeedback",
        "RespondFeedback",  # the same answer again is OK
        # The console's reads (issue 11). Not PutWorkflow (a repeat bumps the version),
        # DeleteWorkflow (a repeat answers NOT_FOUND) nor DeleteDeadLetters.
        "CountRuns",
        "GetWorkflow",
        "ListWorkflows",
    ),
    "graflow_api.v1.Coordinator": (
        "Dispatch",  # idempotent per (run, node, attempt)
        "RegisterWorker",
        "Heartbeat",
        "DeregisterWorker",
        "ListWorkers",
        "ListDeadLetters",
        "NotifyCanceled",
        "ListAuditEvents",
        "ListQueues",
    ),
    "graflow_api.v1.ResultStore": (
        "PutResults",  # idempotent per (run, node, attempt)
        "GetResults",
        "PutGraph",  # content-addressed
        "GetGraph",
        "ChannelGet",
        "ChannelKeys",
        "PutCheckpoint",  # one writer per (run, node): the task's attempt
        "GetCheckpoint",
        "KeepRunsAlive",
    ),
}
# At most 5 attempts (gRPC's own cap), each after a random pause of up to 0.1, 0.2, 0.4, 0.8 s: a
# call whose replica died reaches another one within about a second; with every replica down it
# fails UNAVAILABLE after at most 1.5 s of pauses (the breaker of a service's Downstream counts it).
RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
SERVICE_CONFIG: dict[str, Any] = {
    # Calls go to every replica in turn (one replica: the same as gRPC's default pick_first).
    "loadBalancingConfig": [{"round_robin": {}}],
    # A replica whose health service says NOT_SERVING (it is shutting down) gets no new calls; a
    # server without a health service is taken as healthy.
    "healthCheckConfig": {"serviceName": ""},
    "methodConfig": [
        {
            "name": [{"service": service, "method": method} for method in methods],
            "retryPolicy": RETRY_POLICY,
        }
        for service, methods in IDEMPOTENT_METHODS.items()
    ],
}
CLIENT_CHANNEL_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.service_config", json.dumps(SERVICE_CONFIG))]


def client_channel_args(
    address: str, options: list[tuple[str, Any]] | None = None
) -> tuple[str, list[tuple[str, Any]]]:
    """The target and options of a client channel to ``address`` (one ``host:port``, a
    comma-separated list of replicas, or a gRPC target such as ``dns:///name:port``:
    :func:`graflow_runtime.addresses.channel_target`); ``options`` replace
    :data:`CLIENT_CHANNEL_OPTIONS`. Raises :class:`graflow_runtime.addresses.AddressError`."""
    target, authority = channel_target(address)
    chosen = list(CLIENT_CHANNEL_OPTIONS if options is None else options)
    if authority is not None:
        chosen.append(("grpc.default_authority", authority))
    return target, chosen
