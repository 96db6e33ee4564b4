"""Who is calling, and may they: credentials with roles, checked before a request is parsed.

A credential is a bearer token (``authorization: Bearer <token>``) whose SHA-256 and role come from
the server's ``AUTH_TOKENS`` (entries ``<role>:<sha256 hex>``), or an mTLS client certificate whose
common name ``AUTH_CERT_ROLES`` maps to a role (entries ``<common name>=<role>``). A presented token
decides alone (a wrong one is refused even over a good certificate); without one, the
certificate's name does. Several entries may hold the same role: two tokens valid at once is how
tokens rotate without downtime (docs/security.md, "Rotating tokens").

The presented token is hashed, then compared with ``hmac.compare_digest`` against every configured
hash, without stopping at a match: the time taken says nothing about which entry, or how much of
one, matched.

:class:`AccessInterceptor` guards every method but health: a handler that receives the request as
raw bytes, admits the caller (UNAUTHENTICATED when there is no valid credential, PERMISSION_DENIED
naming the role and the method when the role is not in the method's rule of
:data:`graflow_runtime.access.METHOD_ROLES`), and only then decodes the body and runs the method.
So a refused call is never parsed (a streamed request is not read at all). Reflection admits any
valid credential. Mutating methods (:data:`graflow_runtime.access.AUDITED`) are written to the
audit log once they are answered or refused for their role.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError

from graflow_runtime.access import AUDITED, METHOD_ROLES, Role
from graflow_runtime.audit import AuditLog
from graflow_runtime.handlers import HEALTH_PREFIX, REFLECTION_PREFIX, WrappingInterceptor, shape_of

log = structlog.get_logger(__name__)

# What the x509 common name of a verified client certificate is filed under in the auth context.
CERT_COMMON_NAME = "x509_common_name"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# How much of a token's hash names it in logs and the audit log (never the token itself).
PRINCIPAL_HASH_CHARS = 12

UNAUTHENTICATED_MESSAGE = (
    "missing or wrong credentials: send metadata 'authorization: Bearer <token>' with a token whose "
    "SHA-256 the server's AUTH_TOKENS lists (or a client certificate its AUTH_CERT_ROLES maps to a role)"
)


def token_digest(token: str) -> str:
    """The SHA-256 hex of ``token``: what ``AUTH_TOKENS`` holds for it."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Identity:
    """An admitted caller: its role and who it is (a token's hash prefix or a certificate's name)."""

    role: Role | None
    principal: str


# The caller of a server without credentials configured (recorded as such in the audit log).
ANONYMOUS = Identity(role=None, principal="anonymous")


@dataclass(frozen=True)
class TokenEntry:
    role: Role
    digest: bytes

    @property
    def principal(self) -> str:
        return f"token:{self.digest.hex()[:PRINCIPAL_HASH_CHARS]}"


def _role(text: str, entry: str) -> Role:
    try:
        return Role(text.strip())
    except ValueError:
        roles = ", ".join(role.value for role in Role)
        raise ValueError(f"entry {entry!r} names the role {text.strip()!r}; roles are {roles}") from None


def parse_token_entry(entry: str) -> TokenEntry:
    """``<role>:<sha256 hex of the token>`` (``printf %s "$TOKEN" | sha256sum``)."""
    role, sep, digest = entry.partition(":")
    digest = digest.strip().lower()
    if not sep or not _SHA256_HEX.fullmatch(digest):
        # Not echoed: a malformed entry may be a token pasted by mistake.
        raise ValueError(
            "an entry is not <role>:<sha256 hex of the token> (64 hex digits, from "
            "printf %s \"$TOKEN\" | sha256sum)"
        )
    return TokenEntry(_role(role, f"{role}:<hash>"), bytes.fromhex(digest))


def parse_cert_role(entry: str) -> tuple[str, Role]:
    """``<certificate common name>=<role>`` (split at the last ``=``)."""
    name, sep, role = entry.rpartition("=")
    if not sep or not name.strip():
        raise ValueError(f"entry {entry!r} is not <certificate common name>=<role>")
    return name.strip(), _role(role, entry)


class Credentials:
    """The credentials a server accepts."""

    def __init__(
        self, tokens: Sequence[TokenEntry] = (), cert_roles: Mapping[str, Role] | None = None
    ) -> None:
        self._tokens = tuple(tokens)
        self._cert_roles = dict(cert_roles or {})

    @classmethod
    def from_settings(
        cls, auth_tokens: Iterable[str], auth_cert_roles: Iterable[str], legacy_token: str = ""
    ) -> Credentials | None:
        """The server's credentials from its settings; None when it has none (auth off).

        A bare legacy ``AUTH_TOKEN`` (the token the process sends) is accepted as ``admin``, as
        every call was before roles existed, but only when neither ``AUTH_TOKENS`` nor
        ``AUTH_CERT_ROLES`` is set: with roles configured, it is only sent.
        """
        tokens = [parse_token_entry(entry) for entry in auth_tokens]
        cert_roles = dict(parse_cert_role(entry) for entry in auth_cert_roles)
        if not tokens and not cert_roles:
            if not legacy_token:
                return None
            log.warning(
                "one shared AUTH_TOKEN and no AUTH_TOKENS: every holder of the token is admin; "
                "configure a token per role (docs/security.md, \"Roles\")"
            )
            tokens = [TokenEntry(Role.ADMIN, hashlib.sha256(legacy_token.encode()).digest())]
        return cls(tokens, cert_roles)

    def identify(
        self, metadata: Iterable[tuple[str, Any]], auth_context: Mapping[str, Any]
    ) -> Identity | None:
        """The caller's identity, or None when it shows no valid credential."""
        token = _bearer(metadata)
        if token is not None:
            return self._token_identity(token)
        for name in auth_context.get(CERT_COMMON_NAME) or ():
            text = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
            role = self._cert_roles.get(text)
            if role is not None:
                return Identity(role, f"cert:{text}")
        return None

    def _token_identity(self, token: str) -> Identity | None:
        presented = hashlib.sha256(token.encode()).digest()
        found: TokenEntry | None = None
        for entry in self._tokens:  # every entry, no early exit: constant in where the match is
            if hmac.compare_digest(presented, entry.digest) and found is None:
                found = entry
        return Identity(found.role, found.principal) if found else None


def _bearer(metadata: Iterable[tuple[str, Any]]) -> str | None:
    for key, value in metadata:
        if key == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


class AccessInterceptor(WrappingInterceptor):
    """Admits callers by role before their request is parsed, and audits mutating methods.

    Without credentials (auth off) only the audited methods are wrapped, to record them as
    ``anonymous``; every other handler is returned as it is.
    """

    def __init__(self, credentials: Credentials | None, audit: AuditLog | None = None) -> None:
        super().__init__()
        self._credentials = credentials
        self._audit = audit

    def passes(self, method: str) -> bool:
        if method.startswith(HEALTH_PREFIX):
            return True
        return self._credentials is None and (self._audit is None or method not in AUDITED)

    def _rule(self, method: str) -> frozenset[Role]:
        if method.startswith(REFLECTION_PREFIX):
            return frozenset(Role)
        return METHOD_ROLES.get(method, frozenset())

    async def _admit(self, method: str, rule: frozenset[Role], context: grpc.aio.ServicerContext) -> Identity:
        if self._credentials is None:
            return ANONYMOUS
        identity = self._credentials.identify(context.invocation_metadata() or (), context.auth_context())
        if identity is None:
            log.warning("call refused: no valid credential", method=method, peer=context.peer())
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)  # raises
        if identity.role not in rule:
            log.warning(
                "call refused: role not allowed",
                method=method,
                role=identity.role,
                principal=identity.principal,
                peer=context.peer(),
            )
            await self._record(method, identity, context, "PERMISSION_DENIED", None)
            allowed = ", ".join(sorted(rule)) or "nobody (it has no rule in graflow_runtime.access)"
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"role {identity.role} may not call {method}; it is for: {allowed}",
            )
        return identity

    async def _record(
        self, method: str, identity: Identity, context: grpc.aio.ServicerContext, outcome: str, request: Any
    ) -> None:
        fields = AUDITED.get(method)
        if self._audit is None or fields is None:
            return
        details = _details(request, fields) if request is not None else {}
        await self._audit.record(
            method=method,
            role=identity.role.value if identity.role else "",
            principal=identity.principal,
            peer=context.peer(),
            outcome=outcome,
            details=details,
        )

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        shape_name, shape = shape_of(handler)
        inner = getattr(handler, shape_name)
        decode: Callable[[bytes], Any] = handler.request_deserializer or (lambda raw: raw)
        rule = self._rule(method)
        streamed_request = shape_name.startswith("stream_")

        async def admitted(raw: Any, context: grpc.aio.ServicerContext) -> tuple[Identity, Any]:
            """The caller, once admitted, and its request decoded (or, streamed, decoded as read)."""
            identity = await self._admit(method, rule, context)
            if streamed_request:
                return identity, _decoded_stream(raw, decode, method, context)
            return identity, await _decoded(decode, raw, method, context)

        behaviour: Callable[..., Any]
        if shape_name == "unary_unary":

            async def unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
                identity, request = await admitted(raw, context)
                outcome = "UNKNOWN"
                try:
                    response = await inner(request, context)
                    outcome = "OK"
                    return response
                except grpc.aio.AbortError:
                    code = context.code()
                    outcome = code.name if isinstance(code, grpc.StatusCode) else outcome
                    raise
                finally:
                    await self._record(method, identity, context, outcome, request)

            behaviour = unary
        elif inspect.isasyncgenfunction(inner):

            async def streamed(raw: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                _, request = await admitted(raw, context)
                async for response in inner(request, context):
                    yield response

            behaviour = streamed
        else:

            async def written(raw: Any, context: grpc.aio.ServicerContext) -> Any:
                _, request = await admitted(raw, context)
                return await inner(request, context)

            behaviour = written
        return shape(behaviour, request_deserializer=None, response_serializer=handler.response_serializer)


async def _decoded(
    decode: Callable[[bytes], Any], raw: bytes, method: str, context: grpc.aio.ServicerContext
) -> Any:
    try:
        return decode(raw)
    except DecodeError as exc:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"the request body of {method} is not a valid message: {exc}"
        )


async def _decoded_stream(
    raw_requests: AsyncIterator[bytes],
    decode: Callable[[bytes], Any],
    method: str,
    context: grpc.aio.ServicerContext,
) -> AsyncIterator[Any]:
    async for raw in raw_requests:
        yield await _decoded(decode, raw, method, context)


def _details(request: Any, fields: Sequence[str]) -> dict[str, Any]:
    """The audited fields of ``request`` (dotted paths); repeated fields as lists."""
    details: dict[str, Any] = {}
    for path in fields:
        value: Any = request
        for part in path.split("."):
            value = getattr(value, part)
        if not isinstance(value, (str, int, float, bool)):
            value = list(value)
        details[path] = value
    return details
