"""Container health check: exit 0 when the gRPC health service at ADDRESS reports SERVING.

    python grpc_health_check.py 127.0.0.1:50051 [service-name]

Copied into every image (deploy/docker/*.Dockerfile) and run with the service's own venv Python,
which already has grpcio and grpcio-health-checking. Kubernetes uses its built-in `grpc:` probes.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout_s: float = 3.0) -> bool:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
        )
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: list[str]) -> int:
    if not 2 <= len(argv) <= 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        serving = check(argv[1], argv[2] if len(argv) == 3 else "")
    except grpc.RpcError as exc:
        print(f"unhealthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print("SERVING" if serving else "NOT_SERVING")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
