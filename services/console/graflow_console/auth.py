"""Who is signed in, and the guards of the pages' forms.

Sign-in takes a bearer token of a role (docs/security.md) and checks it with a cheap call
(ListRuns, limit 1): UNAUTHENTICATED means the token is wrong; PERMISSION_DENIED still signs in,
since a role may lack that one read. The token is then kept only in the session cookie, encrypted
and authenticated with Fernet (so the browser holds it but cannot read or forge it; no server-side
session store, which keeps replicas stateless), HttpOnly (no script reads it), SameSite=Lax (no
other site's POST carries it, while a link from elsewhere, such as a feedback webhook's message,
still arrives signed in) and Secure when browsers reach the console over HTTPS (its own TLS or an
https:// PUBLIC_URL in front of it). Every call the console makes for the person carries that token
(:meth:`graflow_console.backend.Backend.as_person`).

CSRF: every form of the pages carries ``csrf_token``, an HMAC of the session's random id, checked
on every non-GET request of the pages together with an Origin (or Referer) same-origin check. The
expected origin is PUBLIC_URL's, else the request's own only when its Host is a trusted one
(:meth:`ConsoleSettings.trusted_hosts`, also enforced for every request by the app's
TrustedHosts middleware), so a DNS-rebinding page cannot pass as the console. Sign-in itself has no
session yet: the origin check guards it. The JSON API (``/api/``) takes
``Authorization: Bearer`` on each request and no cookie, so forged cross-site requests cannot
carry a credential there.
"""

from __future__ import annotations

import base64
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
        self._csrf_key = _derived_key(b"graflow-console-csrf:", key)
        # Flash messages ride in a short-lived cookie of their own, under a key of their own derived
        # from the session key: every replica sharing SESSION_KEY reads the one another set before
        # its redirect.
        self.flash_fernet = Fernet(base64.urlsafe_b64encode(_derived_key(b"graflow-console-flash:", key)))
        self._max_age_s = settings.session_max_age_s
        self.secure = settings.secure_cookies
        self._public_origin = _origin(settings.public_url) if settings.public_url else ""
        self._trusted_hosts = frozenset(settings.trusted_hosts())

    # ---- the cookie ----
    def cookie_value(self, token: str) -> str:
        payload = json.dumps({"token": token, "sid": secrets.token_urlsafe(16)})
        return self._fernet.encrypt(payload.encode()).decode()

    def cookie_options(self) -> dict[str, object]:
        return {
            "key": COOKIE,
            "max_age": self._max_age_s,
            "httponly": True,
            "samesite": "lax",
            "secure": self.secure,
            "path": "/",
        }

    def read(self, request: Request) -> Session | None:
        raw = request.cookies.get(COOKIE)
        if not raw:
            return None
        try:
            payload = json.loads(self._fernet.decrypt(raw.encode(), ttl=self._max_age_s))
            token, session_id = str(payload["token"]), str(payload["sid"])
            backend: Backend = request.app.state.backend
            person = backend.as_person(token)
        except (InvalidToken, ValueError, KeyError, TypeError, ConsoleError):
            return None
        return Session(token, session_id, self._csrf_of(session_id), person)

    def _csrf_of(self, session_id: str) -> str:
        return hmac.new(self._csrf_key, session_id.encode(), hashlib.sha256).hexdigest()

    # ---- guards ----
    def require(self, request: Request) -> Session:
        """The request's session, or :class:`SignInRequired` (a redirect to /login). After sign-in
        the browser GETs the recorded page: for a GET, the page asked for; for a form's POST (its
        session expired meanwhile), the page the form was on (a same-origin Referer), else /runs,
        since GETting a POST-only path would answer 405."""
        session = self.read(request)
        if session is None:
            if request.method in SAFE_METHODS:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            else:
                target = self._same_origin_referer_path(request) or "/runs"
            raise SignInRequired(target)
        return session

    def _expected_origin(self, request: Request) -> str | None:
        """The console's own origin: PUBLIC_URL's, else the request's when its Host is trusted
        (never the Host alone: a rebound attacker's name would match its own Origin)."""
        if self._public_origin:
            return self._public_origin
        if (request.url.hostname or "").lower() in self._trusted_hosts:
            return _origin(str(request.base_url))
        return None

    def _same_origin_referer_path(self, request: Request) -> str | None:
        referer = request.headers.get("referer")
        expected = self._expected_origin(request)
        if not referer or expected is None or _origin(referer) != expected:
            return None
        parts = urlsplit(referer)
        path = parts.path or "/"
        if not path.startswith("/") or path.startswith("//"):
            return None
        return path + (f"?{parts.query}" if parts.query else "")

    def check_origin(self, request: Request) -> None:
        """Refuse (403) a non-GET request whose Origin, or failing that Referer, is not the
        console's own origin; one with neither is refused too (browsers send Origin on form
        posts)."""
        if request.method in SAFE_METHODS:
            return
        expected = self._expected_origin(request)
        origin = request.headers.get("origin")
        if origin is None or origin == "null":
            referer = request.headers.get("referer")
            origin = _origin(referer) if referer else None
        if expected is None or origin != expected:
            raise ConsoleError(
                403, "PERMISSION_DENIED",
                "refused: this form was not sent from the console's own pages "
                f"({expected or 'unknown host'}); reload the page and try again",
            )

    def check_csrf(self, request: Request, session: Session, submitted: str | None) -> None:
        """Origin check, then the form's ``csrf_token`` against the session's (as bytes: comparing
        str raises TypeError on non-ASCII input, which would answer 500)."""
        self.check_origin(request)
        if not submitted or not hmac.compare_digest(submitted.encode(), session.csrf_token.encode()):
            raise ConsoleError(
                403, "PERMISSION_DENIED",
                "refused: the form's CSRF token is missing or stale; reload the page and try again",
            )


def _derived_key(label: bytes, key: bytes) -> bytes:
    """A 32-byte key for one purpose (``label``) derived from the session key, so one secret serves
    every replica and a key leaked for one purpose does not reveal another."""
    return hashlib.sha256(label + key).digest()


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
