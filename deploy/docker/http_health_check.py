"""Container health check of the web console: exit 0 when ``GET /healthz`` at ADDRESS answers 200.

    python http_health_check.py [--tls-env GRAFLOW_CONSOLE_] 127.0.0.1:8480

Copied into the console's image (deploy/docker/console.Dockerfile), run with its venv Python
(standard library only); Docker's HEALTHCHECK and the Kubernetes exec probes run it. ``--tls-env
PREFIX``: when ``<PREFIX>TLS_CERT_FILE`` is set the console serves HTTPS, so the check does too,
verifying the certificate against ``<PREFIX>TLS_CA_FILE`` (it must then be valid for 127.0.0.1, as
for the gRPC services' check) and showing the console's own certificate when it requires client
certificates.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request


def url_and_context(address: str, prefix: str) -> tuple[str, ssl.SSLContext | None]:
    cert, key, ca = (os.environ.get(f"{prefix}TLS_{name}_FILE", "") for name in ("CERT", "KEY", "CA"))
    if not (prefix and cert):
        return f"http://{address}/healthz", None
    context = ssl.create_default_context(cafile=ca or None)
    context.load_cert_chain(cert, key)
    return f"https://{address}/healthz", context


def main(argv: list[str]) -> int:
    args = argv[1:]
    prefix = ""
    if args[:1] == ["--tls-env"] and len(args) >= 2:
        prefix, args = args[1], args[2:]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    url, context = url_and_context(args[0], prefix)
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as reply:  # noqa: S310 - our own URL
            status = reply.status
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
