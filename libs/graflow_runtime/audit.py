"""The audit log: every mutating action, who took it, when and from where.

One capped stream (:data:`graflow_runtime.keys.AUDIT_STREAM`, ``XADD MAXLEN ~``) that every API
server appends to from its auth layer (:class:`graflow_runtime.auth.AccessInterceptor`), so no
handler has to remember it, and that the coordinator lists (``ListAuditEvents``, ``graflow audit``).
An event names its caller by role and principal (a token's hash prefix or a certificate's common
name), never by the token.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from graflow_api.v1 import coordinator_pb2
from graflow_runtime import keys
from graflow_runtime.errors import InvalidRequest
from graflow_runtime.limits import AUDIT_PAGE_MAX
from graflow_runtime.streams import STREAM_ID_RULE, is_stream_id

log = structlog.get_logger(__name__)

# Default cap of the audit stream (approximate: XADD MAXLEN ~).
DEFAULT_AUDIT_MAXLEN = 100_000
# Events of a ListAuditEvents page that asks for none in particular.
DEFAULT_PAGE = 100


class AuditLog:
    """Appends the actions one service answered to the audit stream, and lists everybody's."""

    def __init__(self, redis: aioredis.Redis, *, service: str, maxlen: int = DEFAULT_AUDIT_MAXLEN) -> None:
        self._redis = redis
        self._service = service
        self._maxlen = maxlen

    async def record(
        self, *, method: str, role: str, principal: str, peer: str, outcome: str, details: Mapping[str, Any]
    ) -> None:
        """Append one event. An unreachable Redis does not fail the call that was answered: the
        event goes to the service's log instead, with the same fields."""
        event = {
            "at_ms": int(time.time() * 1000),
            "service": self._service,
            "method": method,
            "role": role,
            "principal": principal,
            "peer": peer,
            "outcome": outcome,
            "details_json": json.dumps(dict(details), separators=(",", ":"), sort_keys=True),
        }
        try:
            await self._redis.xadd(keys.AUDIT_STREAM, event, maxlen=self._maxlen, approximate=True)
        except RedisError as exc:
            log.error("audit event not written to Redis", error=str(exc), **event)

    async def list(self, *, limit: int = 0, before_id: str = "") -> list[coordinator_pb2.AuditEvent]:
        """Up to ``limit`` events (0 = :data:`DEFAULT_PAGE`) of every service, newest first, older
        than ``before_id`` (exclusive) when given."""
        if limit > AUDIT_PAGE_MAX:
            raise InvalidRequest(f"limit: {limit} is over the maximum of {AUDIT_PAGE_MAX} events per page")
        if before_id and not is_stream_id(before_id):
            raise InvalidRequest(f"before_id: {before_id[:64]!r} is not an audit event id ({STREAM_ID_RULE})")
        newest = f"({before_id}" if before_id else "+"
        entries = await self._redis.xrevrange(
            keys.AUDIT_STREAM, max=newest, min="-", count=limit or DEFAULT_PAGE
        )
        return [_event(entry_id, fields) for entry_id, fields in entries]



def _event(entry_id: bytes, fields: Mapping[bytes, bytes]) -> coordinator_pb2.AuditEvent:
    text = {key.decode(): value.decode(errors="replace") for key, value in fields.items()}
    return coordinator_pb2.AuditEvent(
        id=entry_id.decode(),
        at_ms=int(text.get("at_ms", "0")),
        service=text.get("service", ""),
        method=text.get("method", ""),
        role=text.get("role", ""),
        principal=text.get("principal", ""),
        peer=text.get("peer", ""),
        outcome=text.get("outcome", ""),
        details_json=text.get("details_json", "{}"),
    )
