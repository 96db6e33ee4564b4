"""Container health check: exit 0 when the gRPC health service at ADDRESS reports SERVING.

    python grpc_health_check.py [--tls-env GRAFLOW_SCHEDULER_] 127.0.0.1:50051 [service-name]

Copied into every image (deploy/docker/*.Dockerfile) and run with the service's own venv Python,
which already has grpcio and grpcio-health-checking; Docker's HEALTHCHECK and the Kubernetes exec
probes run it. ``--tls-env PREFIX``: when ``<PREFIX>TLS_CERT_FILE`` is set the server serves TLS, so
the check does too, trusting ``<PREFIX>TLS_CA_FILE`` and showing the service's own certificate
(``<PREFIX>TLS_CERT_FILE``/``..._KEY_FILE``, for servers that require client certificates). The
certificate must then be valid for the address checked (127.0.0.1). The worker's health server is
always plaintext: its check has no ``--tls-env``.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def credentials(prefix: str) -> grpc.ChannelCredentials | None:
    """TLS credentials from the service's own ``<prefix>TLS_*`` variables; None: plaintext."""
    cert, key, ca = (os.environ.get(f"{prefix}TLS_{name}_FILE", "") for name in ("CERT", "KEY", "CA"))
    if not cert:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca) if ca else None, private_key=_read(key), certificate_chain=_read(cert)
    )


def check(address: str, service: str = "", timeout_s: float = 3.0, tls_env: str = "") -> bool:
    tls = credentials(tls_env) if tls_env else None
    opened = grpc.secure_channel(address, tls) if tls else grpc.insecure_channel(address)
    with opened as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
        )
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: list[str]) -> int:
    args = argv[1:]
    tls_env = ""
    if args[:1] == ["--tls-env"] and len(args) >= 2:
        tls_env, args = args[1], args[2:]
    if not 1 <= len(args) <= 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        serving = check(args[0], args[1] if len(args) == 2 else "", tls_env=tls_env)
    except grpc.RpcError as exc:
        print(f"unhealthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"unhealthy: cannot read a TLS file of {tls_env}TLS_*: {exc}", file=sys.stderr)
        return 1
    print("SERVING" if serving else "NOT_SERVING")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
