"""Checking Graflow's webhook requests in your receiver (docs/operations.md, "Feedback
notifications").

The scheduler POSTs a JSON body with the headers ``X-Graflow-Timestamp`` (unix seconds) and
``X-Graflow-Signature`` (``v1=<hex HMAC-SHA256 of "<timestamp>.<body>">``) when
``GRAFLOW_SCHEDULER_FEEDBACK_WEBHOOK_SECRET`` is set. Check the raw body before parsing it::

    from graflow.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature

    body = request.body()  # bytes, as received
    if not verify_signature(SECRET, request.headers[TIMESTAMP_HEADER], body,
                            request.headers[SIGNATURE_HEADER]):
        return 401

``verify_signature`` answers False for any header it cannot match (a timestamp that is not the
ASCII digits that were signed, non-ASCII characters) and raises ValueError for an empty secret: an
unset variable must not make every request pass.

Deliveries are at least once: dedupe by ``graflow.request_id`` of the payload.
"""

from __future__ import annotations

from graflow_runtime.webhooks import (
    DEFAULT_TOLERANCE_S,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
    verify_signature,
)

__all__ = ["DEFAULT_TOLERANCE_S", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "sign", "verify_signature"]
