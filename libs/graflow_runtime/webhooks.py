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
    """The HMAC key. An empty secret is refused: any one could compute its signatures, so a
    receiver configured with an unset variable would accept anything."""
    key = secret.encode() if isinstance(secret, str) else secret
    if not key:
        raise ValueError("the webhook secret is empty: set the shared secret to sign or verify requests")
    return key


def _digits(timestamp: int | str) -> str | None:
    """``timestamp`` as the ASCII digits that are signed, or None when it is not such digits.

    The digits are signed as given (not re-serialized from an int): ``" 0<ts>"`` or ``"1_700..."``
    would otherwise parse to the same number and verify."""
    text = str(timestamp)
    return text if text.isascii() and text.isdigit() else None


def sign(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """The ``X-Graflow-Signature`` value of ``body`` sent at ``timestamp`` (unix seconds).

    Raises ValueError for an empty secret or a timestamp that is not ASCII digits."""
    digits = _digits(timestamp)
    if digits is None:
        raise ValueError(f"the webhook timestamp must be unix seconds in ASCII digits, not {timestamp!r}")
    message = digits.encode() + b"." + body
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
    several signatures separated by commas (secrets in rotation): one match is enough.

    A timestamp that is not plain ASCII digits, or a header with other characters (sent by anyone),
    gives False, never an exception; an empty ``secret`` raises ValueError (a configuration error:
    checking against it would accept whatever an attacker signs with the empty key)."""
    key = _secret_bytes(secret)
    digits = _digits(timestamp)
    if digits is None:
        return False
    current = time.time() if now is None else now
    if abs(current - int(digits)) > tolerance_s:
        return False
    # Bytes: compare_digest refuses str with non-ASCII characters (TypeError).
    expected = sign(key, digits, body).encode()
    return any(
        hmac.compare_digest(expected, candidate.strip().encode("utf-8", "surrogatepass"))
        for candidate in signature.split(",")
    )
