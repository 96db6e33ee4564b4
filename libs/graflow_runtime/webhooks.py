"""The signature of Graflow's webhook requests, written once: the scheduler signs the feedback
notifications it POSTs (graflow_scheduler.notify), receivers check them with
:func:`verify_signature` (re-exported by the SDK as ``graflow.webhooks``).

A request carries ``X-Graflow-Timestamp: <unix seconds>`` and ``X-Graflow-Signature: v1=<hex>``,
where ``<hex>`` is HMAC-SHA256 with the shared secret of ``b"<timestamp>." + body``. Signing the
timestamp with the body lets a receiver refuse a captured request replayed later (outside its
tolerance); the ``v1=`` scheme prefix leaves room for another algorithm without ambiguity.

Plain Python, no third-party imports: the SDK imports it.
"""

from __future__ import annotations

import hashlib
import hmac
import time

TIMESTAMP_HEADER = "X-Graflow-Timestamp"
SIGNATURE_HEADER = "X-Graflow-Signature"
SCHEME = "v1"
# Seconds a receiver accepts between the timestamp and its own clock, either way.
DEFAULT_TOLERANCE_S = 300


def _secret_bytes(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def sign(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """The ``X-Graflow-Signature`` value of ``body`` sent at ``timestamp`` (unix seconds)."""
    message = str(timestamp).encode() + b"." + body
    return f"{SCHEME}={hmac.new(_secret_bytes(secret), message, hashlib.sha256).hexdigest()}"


def verify_signature(
    secret: str | bytes,
    timestamp: int | str,
    body: bytes,
    signature: str,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    *,
    now: float | None = None,
) -> bool:
    """True when ``signature`` (the ``X-Graflow-Signature`` header) is ``secret``'s signature of
    ``body`` (the raw request body, before any JSON parsing) at ``timestamp`` (the
    ``X-Graflow-Timestamp`` header), and that timestamp is within ``tolerance_s`` seconds of ``now``
    (default: this machine's clock). The comparison takes constant time. The header may list
    several signatures separated by commas (secrets in rotation): one match is enough."""
    try:
        sent_at = int(str(timestamp).strip())
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance_s:
        return False
    expected = sign(secret, sent_at, body)
    return any(hmac.compare_digest(expected, candidate.strip()) for candidate in signature.split(","))
