"""What every page shares: the templates, the static assets, the session and form guards, and the
flash message carried across a redirect.

Templates and assets are package resources (``importlib.resources``), so they are found the same in
a source tree, a wheel and a PEX, and every asset is served by the console itself (air-gapped: no
CDN). htmx is vendored as ``static/htmx.min.js`` (docs/console.md names its version).
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any

import jinja2
from cryptography.fernet import InvalidToken
from fastapi import Depends, Request, Response
from fastapi.datastructures import FormData
from fastapi.responses import HTMLResponse

from graflow_console.auth import Session, Sessions

FLASH_COOKIE = "graflow_console_flash"


def time_text(ms: int) -> str:
    """An epoch-milliseconds time as the pages show it: UTC, to the second ("" for 0)."""
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def duration_text(start_ms: int, end_ms: int) -> str:
    if not start_ms or not end_ms or end_ms < start_ms:
        return ""
    seconds = (end_ms - start_ms) / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {seconds:02d}s"


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("graflow_console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["time"] = time_text
    env.globals["duration"] = duration_text
    return env


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Every file of ``static/``, read once at start-up (a handful of small files)."""
    assets: dict[str, Asset] = {}
    for entry in resources.files("graflow_console").joinpath("static").iterdir():
        if entry.is_file():
            body = entry.read_bytes()
            media_type = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            assets[entry.name] = Asset(body, media_type, etag)
    return assets


def sessions_of(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.sessions
    return sessions


def current_session(request: Request) -> Session:
    """FastAPI dependency of the pages: the signed-in session, or a redirect to /login."""
    return sessions_of(request).require(request)


SessionDep = Annotated[Session, Depends(current_session)]


async def posted_form(request: Request) -> tuple[Session, FormData]:
    """The session and the form of a page's POST, after the origin and CSRF checks."""
    session = sessions_of(request).require(request)
    form = await request.form()
    token = form.get("csrf_token")
    sessions_of(request).check_csrf(request, session, token if isinstance(token, str) else None)
    return session, form


def flash(response: Response, request: Request, kind: str, message: str) -> None:
    """Show ``message`` (kind "ok" or "error") on the next page rendered for this browser."""
    sessions = sessions_of(request)
    value = sessions.flash_fernet.encrypt(f"{kind}\n{message}".encode()).decode()
    # Secure as the session cookie (behind a TLS-terminating proxy the request itself is plain HTTP).
    response.set_cookie(FLASH_COOKIE, value, max_age=60, httponly=True, samesite="lax",
                        secure=sessions.secure, path="/")


def _take_flash(request: Request) -> tuple[str, str] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    try:
        text = sessions_of(request).flash_fernet.decrypt(raw.encode(), ttl=60).decode()
        kind, _, message = text.partition("\n")
    except InvalidToken:
        return None
    return (kind, message) if kind in ("ok", "error") else None


def render(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    session: Session | None = None,
    status_code: int = 200,
    error: str | None = None,
) -> HTMLResponse:
    """A page: ``template`` with ``context``, the signed-in session (for the header and the forms'
    CSRF token) and the flash message (``error`` given here, or one left by a redirect)."""
    if session is None:
        session = sessions_of(request).read(request)
    flash_message = ("error", error) if error is not None else _take_flash(request)
    env: jinja2.Environment = request.app.state.templates
    body = env.get_template(template).render(
        request=request,
        session=session,
        csrf_token=session.csrf_token if session else "",
        flash=flash_message,
        **(context or {}),
    )
    response = HTMLResponse(body, status_code=status_code)
    if request.cookies.get(FLASH_COOKIE):
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response
