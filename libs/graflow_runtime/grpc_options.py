"""Channel and server options shared by every gRPC endpoint of Graflow."""

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
