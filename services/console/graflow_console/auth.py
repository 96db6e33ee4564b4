"""Who is signed in, and the guards of the pages' forms.

Sign-in takes a bearer token of a role (docs/security.md) and checks it with a cheap call
(ListRuns, limit 1): UNAUTHENTICATED means the token is wrong; PERMISSION_DENIED still signs in,
since a role may lack that one read. The token is then kept only in the session cookie, encrypted
and authenticated with Fernet (so the browser holds it but cannot read or forge it; no server-side
session store, which keeps replicas stateless), HttpOnly (no script reads it), SameSite=Strict (no
other site's page sends it) and Secure under HTTPS. Every call the console makes for the person
carries that token (:meth:`graflow_console.backend.Backend.as_person`).

CSRF: every form of the pages carries ``csrf_token``, an HMAC of the session's random id, checked
on every non-GET request of the pages together with an Origin (or Referer) same-origin check.
Sign-in itself has no session yet: the origin check guards it. The JSON API (``/api/``) takes
``Authorization: Bearer`` on each request and no cookie, so forged cross-site requests cannot
carry a credential there.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import structlog
from cryptography.fernet import Fernet, InvalidToken
from fastapi import Request

from graflow_api.v1 import scheduler_pb2

from graflow_console.backend import Backend, ConsoleError, Person
from graflow_console.settings import ConsoleSettings

log = structlog.get_logger(__name__)

COOKIE = "graflow_console_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class SignInRequired(Exception):
    """A page was asked for without a valid session: the answer is a redirect to /login."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url

    @property
    def login_url(self) -> str:
        return "/login?next=" + quote(self.next_url, safe="/")


@dataclass(frozen=True)
class Session:
    token: str
    # Random per sign-in: what the CSRF token is derived from.
    session_id: str
    csrf_token: str
    person: Person

    @property
    def fingerprint(self) -> str:
        """How the page names the signed-in token without showing it (its digest's start, as
        ``graflow_runtime.auth`` token digests are written in AUTH_TOKENS)."""
        return hashlib.sha256(self.token.encode()).hexdigest()[:8]


class Sessions:
    """Encrypts, reads and guards sessions with the process's key."""

    def __init__(self, settings: ConsoleSettings) -> None:
        key = settings.session_key.encode()
        if not key:
            key = Fernet.generate_key()
            log.warning(
                "no GRAFLOW_CONSOLE_SESSION_KEY: using a random key, so sign-ins end when this process "
                "restarts and replicas do not share them; set one for a deployment"
            )
        self._fernet = Fernet(key)
        self._csrf_key = hashlib.sha256(b"graflow-console-csrf:" + key).digest()
        self._max_age_s = settings.session_max_age_s
        self._secure = settings.https
        self._public_origin = _origin(settings.public_url) if settings.public_url else ""

    # ---- the cookie ----
    def cookie_value(self, token: str) -> str:
        payload = json.dumps({"token": token, "sid": secrets.token_urlsafe(16)})
        return self._fernet.encrypt(payload.encode()).decode()

    def cookie_options(self) -> dict[str, object]:
        return {
            "key": COOKIE,
            "max_age": self._max_age_s,
            "httponly": True,
            "samesite": "strict",
            "secure": self._secure,
            "path": "/",
        }

    def read(self, request: Request) -> Session | None:
        raw = request.cookies.get(COOKIE)
        if not raw:
            return None
        try:
            payload = json.loads(self._fernet.decrypt(raw.encode(), ttl=self._max_age_s))
            token, session_id = str(payload["token"]), str(payload["sid"])
        except (InvalidToken, ValueError, KeyError, TypeError):
            return None
        backend: Backend = request.app.state.backend
        return Session(token, session_id, self._csrf_of(session_id), backend.as_person(token))

    def _csrf_of(self, session_id: str) -> str:
        return hmac.new(self._csrf_key, session_id.encode(), hashlib.sha256).hexdigest()

    # ---- guards ----
    def require(self, request: Request) -> Session:
        """The request's session, or :class:`SignInRequired` (a redirect to /login)."""
        session = self.read(request)
        if session is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise SignInRequired(target)
        return session

    def check_origin(self, request: Request) -> None:
        """Refuse (403) a non-GET request whose Origin, or failing that Referer, is not the
        console's own origin; one with neither is refused too (browsers send Origin on form
        posts)."""
        if request.method in SAFE_METHODS:
            return
        expected = self._public_origin or _origin(str(request.base_url))
        origin = request.headers.get("origin")
        if origin is None or origin == "null":
            referer = request.headers.get("referer")
            origin = _origin(referer) if referer else None
        if origin != expected:
            raise ConsoleError(
                403, "PERMISSION_DENIED",
                f"refused: this form was not sent from the console's own pages ({expected}); reload "
                "the page and try again",
            )

    def check_csrf(self, request: Request, session: Session, submitted: str | None) -> None:
        """Origin check, then the form's ``csrf_token`` against the session's."""
        self.check_origin(request)
        if not submitted or not hmac.compare_digest(submitted, session.csrf_token):
            raise ConsoleError(
                403, "PERMISSION_DENIED",
                "refused: the form's CSRF token is missing or stale; reload the page and try again",
            )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


async def check_token(person: Person) -> None:
    """Sign-in check: a wrong token is a 401 ConsoleError; a token whose role may not list runs is
    still a valid one (PERMISSION_DENIED passes)."""
    try:
        await person.scheduler("ListRuns", scheduler_pb2.ListRunsRequest(limit=1))
    except ConsoleError as exc:
        if exc.grpc_code == "PERMISSION_DENIED":
            return
        if exc.grpc_code == "UNAUTHENTICATED":
            raise ConsoleError(401, exc.grpc_code, f"this token is not accepted: {exc.message}") from exc
        raise
