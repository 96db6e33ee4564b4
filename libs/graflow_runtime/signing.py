"""Integrity on the bus (issue 14, section 3): every message a consumer acts on carries an HMAC.

Whoever can write to Redis could otherwise append a task envelope that a worker runs, or an outcome
that the scheduler applies. Each such message is signed where its bytes are made, in Python: an
HMAC-SHA256 over a label naming the kind of message, the key id and the message's exact bytes. The
stream entry carries the key id (field ``k``) and the MAC in hex (field ``s``) beside the message;
Lua scripts only carry them. The consumer verifies them before it decodes anything.

Keys come from configuration (``SIGNING_KEYS``: ``<key id>:<secret>``, ``SIGNING_KEY_ID``: the one
that signs). Every listed key verifies, which is how a key rotates: add the new key everywhere,
switch the signing id, remove the old one. With no key the process runs unsigned (development:
it signs nothing and accepts anything, and says so at start-up); a process with keys never accepts
an unsigned or badly signed message. docs/security.md, "Integrity on the bus", says who holds which
key and what a leaked key allows.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from graflow_runtime.errors import ConfigurationError

log = structlog.get_logger(__name__)

# Stream entry fields beside the message: the signing key's id and the HMAC (hex).
KEY_ID_FIELD = b"k"
SIGNATURE_FIELD = b"s"
# Reason of the dead letters of messages that fail the check (the prefix of DeadLetter.reason).
BAD_SIGNATURE = "BadSignature"
KEY_ID_RULE = "1-64 characters of A-Z a-z 0-9 _ . -"
MIN_SECRET_BYTES = 32
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")


class Kind(enum.Enum):
    """What a signed message is: part of the MAC, so one kind's signature never passes for another's
    (an envelope's bytes replayed as an outcome, say)."""

    ENVELOPE = b"graflow.v1.TaskEnvelope"
    OUTCOME = b"graflow.v1.TaskOutcome"


class SigningKeysError(ConfigurationError):
    """The signing settings are unusable (the message names the setting and the rule)."""


@dataclass(frozen=True)
class Signature:
    key_id: bytes
    mac: bytes  # hex digits

    def fields(self) -> dict[bytes, bytes]:
        return {KEY_ID_FIELD: self.key_id, SIGNATURE_FIELD: self.mac}


@dataclass
class BadSignatureCounter:
    """Messages refused for their signature, by kind, since the process started (an in-process
    counter the metrics issue can expose)."""

    by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, kind: Kind) -> int:
        self.by_kind[kind.name] = self.by_kind.get(kind.name, 0) + 1
        return self.by_kind[kind.name]


class BusKeys:
    """The HMAC keys of one process: ``keys`` (key id -> secret) all verify, ``signing_key_id``
    signs. Without keys it is disabled: it signs nothing and :meth:`problem` accepts anything."""

    def __init__(
        self, keys: Mapping[str, bytes] | None = None, signing_key_id: str = "", *, prefix: str = ""
    ) -> None:
        self._keys = {key_id.encode(): secret for key_id, secret in (keys or {}).items()}
        if self._keys and signing_key_id.encode() not in self._keys:
            raise SigningKeysError(
                f"{prefix}SIGNING_KEY_ID {signing_key_id!r} names none of the keys of {prefix}SIGNING_KEYS "
                f"({', '.join(sorted(k.decode() for k in self._keys))})"
            )
        self._signing_id = signing_key_id.encode()
        self.refused = BadSignatureCounter()

    @classmethod
    def from_settings(cls, entries: Sequence[str], signing_key_id: str, *, prefix: str = "") -> BusKeys:
        """From ``SIGNING_KEYS`` items (``<key id>:<secret>``, the secret in hex or base64, at
        least 32 bytes) and ``SIGNING_KEY_ID`` (may be empty when exactly one key is listed).
        Errors name the variables with ``prefix`` (``GRAFLOW_WORKER_``...), never a secret."""
        keys_var, id_var = f"{prefix}SIGNING_KEYS", f"{prefix}SIGNING_KEY_ID"
        keys: dict[str, bytes] = {}
        for index, entry in enumerate(entries):
            key_id, sep, text = entry.partition(":")
            where = f"{keys_var}[{index}]"
            if not sep or not _KEY_ID.fullmatch(key_id):
                raise SigningKeysError(
                    f"{where}: expected '<key id>:<secret>' with a key id of {KEY_ID_RULE}"
                )
            if key_id in keys:
                raise SigningKeysError(f"{where}: key id {key_id!r} is listed twice")
            secret = _secret(text.strip())
            if secret is None:
                raise SigningKeysError(f"{where} ({key_id}): the secret is neither hex nor base64")
            if len(secret) < MIN_SECRET_BYTES:
                raise SigningKeysError(
                    f"{where} ({key_id}): the secret is {len(secret)} bytes; at least {MIN_SECRET_BYTES} "
                    "random bytes are needed (e.g. `openssl rand -hex 32`)"
                )
            keys[key_id] = secret
        if not signing_key_id and len(keys) == 1:
            signing_key_id = next(iter(keys))
        if keys and not signing_key_id:
            raise SigningKeysError(f"{id_var} is empty: with several {keys_var}, name the one that signs")
        if signing_key_id and not keys:
            raise SigningKeysError(f"{id_var} is set but {keys_var} is empty")
        return cls(keys, signing_key_id, prefix=prefix)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @property
    def signing_key_id(self) -> str:
        return self._signing_id.decode()

    @property
    def key_ids(self) -> list[str]:
        return sorted(k.decode() for k in self._keys)

    def sign(self, kind: Kind, data: bytes) -> Signature | None:
        """The signature of ``data`` with the signing key; None when disabled."""
        if not self._keys:
            return None
        return Signature(self._signing_id, _mac(self._keys[self._signing_id], kind, self._signing_id, data))

    def sign_fields(self, kind: Kind, data: bytes) -> dict[bytes, bytes]:
        """The stream fields that sign ``data`` (empty when disabled)."""
        signature = self.sign(kind, data)
        return signature.fields() if signature else {}

    def problem(self, kind: Kind, data: bytes, key_id: bytes | None, mac: bytes | None) -> str | None:
        """Why ``data`` with ``key_id`` and ``mac`` does not verify (a reason starting with
        ``BadSignature``), or None when it does or when this process has no keys. Constant time in
        the MAC. Counts each refusal."""
        if not self._keys:
            return None
        if not key_id or not mac:
            reason = f"{BAD_SIGNATURE}: the message is not signed (no field 'k' or 's')"
        elif (secret := self._keys.get(key_id)) is None:
            reason = f"{BAD_SIGNATURE}: unknown key id {key_id[:64]!r} (known: {', '.join(self.key_ids)})"
        elif not hmac.compare_digest(_mac(secret, kind, key_id, data), mac):
            reason = f"{BAD_SIGNATURE}: the HMAC of key {key_id.decode()!r} does not match the message"
        else:
            return None
        total = self.refused.add(kind)
        log.warning("message refused: bad signature", kind=kind.name, reason=reason, refused_total=total)
        return reason

    def fields_problem(self, kind: Kind, data: bytes, fields: Mapping[bytes, bytes]) -> str | None:
        """:meth:`problem` with the key id and MAC read from a stream entry's ``fields``."""
        return self.problem(kind, data, fields.get(KEY_ID_FIELD), fields.get(SIGNATURE_FIELD))

    def log_mode(self, service: str) -> None:
        """The start-up line that says whether this process signs and verifies bus messages."""
        if self._keys:
            log.info("bus messages are signed and verified", service=service,
                     signing_key_id=self.signing_key_id, key_ids=self.key_ids)
        else:
            log.warning("bus messages are NOT signed: no SIGNING_KEYS configured; anybody who can "
                        "write to Redis can inject tasks and outcomes (development only)", service=service)


UNSIGNED = BusKeys()


def _mac(secret: bytes, kind: Kind, key_id: bytes, data: bytes) -> bytes:
    mac = hmac.new(secret, kind.value, hashlib.sha256)
    mac.update(b"\n" + key_id + b"\n")
    mac.update(data)
    return mac.hexdigest().encode()


def _secret(text: str) -> bytes | None:
    """Hex when the text is hex digits (an even number), else standard or URL-safe base64."""
    if _HEX.fullmatch(text):
        return bytes.fromhex(text)
    try:
        return base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None
