"""The console as an ASGI application: ``create_app(settings)``.

FastAPI (on Starlette) serves the server-rendered pages (Jinja2 + htmx) and the JSON API with its
OpenAPI description at /api/openapi.json. Swagger UI and ReDoc are off: FastAPI loads them from a
CDN, and the console must work air-gapped. Routers come from the modules in :data:`ROUTER_MODULES`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from graflow_runtime.version import __version__

from graflow_console import api, feedback_pages, ops, pages, run_page, signin
from graflow_console.auth import Sessions, SignInRequired
from graflow_console.backend import Backend, ConsoleError
from graflow_console.settings import ConsoleSettings
from graflow_console.web import load_assets, render, templates

log = structlog.get_logger(__name__)

# Every page's scripts, styles and images come from the console itself (no inline script, no CDN);
# no other site may frame it (clickjacking) or receive its URLs in a Referer.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}

# Sent when browsers reach the console over HTTPS (Sessions.secure): a year, this host only.
HSTS = "max-age=31536000"
# The gRPC code names of the HTTP errors the routing itself answers (the API's error body).
HTTP_ERROR_CODES = {404: "NOT_FOUND", 405: "UNIMPLEMENTED"}

# Each module has a ``router``; the JSON API and the operations pages add theirs here.
ROUTER_MODULES = [signin, pages, run_page, feedback_pages, ops, api]


def create_app(settings: ConsoleSettings, backend: Backend | None = None) -> FastAPI:
    """The console on ``settings``; ``backend`` (the services' channels) is opened when the
    application starts (on its event loop, which gRPC's channels are bound to) unless given, and
    closed when it stops either way."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.backend = backend or Backend(settings)
        try:
            yield
        finally:
            await app.state.backend.close()

    app = FastAPI(
        title="Graflow console API",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.sessions = Sessions(settings)
    app.state.templates = templates()
    assets = load_assets()

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str, request: Request) -> Response:
        asset = assets.get(name)
        if asset is None:
            return Response("no such asset", status_code=404, media_type="text/plain")
        headers = {"etag": asset.etag, "cache-control": "public, max-age=3600"}
        if request.headers.get("if-none-match") == asset.etag:
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        """Liveness and readiness: the process serves (the services' own health is theirs)."""
        return {"status": "ok"}

    @app.exception_handler(SignInRequired)
    async def sign_in(request: Request, exc: SignInRequired) -> Response:
        return RedirectResponse(exc.login_url, status_code=303)

    @app.exception_handler(ConsoleError)
    async def console_error(request: Request, exc: ConsoleError) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse(
                {"error": {"code": exc.grpc_code, "message": exc.message}}, status_code=exc.status_code
            )
        return render(request, "error.html", status_code=exc.status_code, error=exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """An unknown path (404) or a wrong method (405): the API's error body under /api/, the
        error page elsewhere (not FastAPI's ``{"detail": ...}``)."""
        code = HTTP_ERROR_CODES.get(exc.status_code, "UNKNOWN")
        message = {404: f"no such page: {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(
            exc.status_code, str(exc.detail))
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": {"code": code, "message": message}},
                                status_code=exc.status_code, headers=exc.headers)
        page = render(request, "error.html", status_code=exc.status_code, error=message)
        page.headers.update(exc.headers or {})
        return page

    for module in ROUTER_MODULES:
        app.include_router(module.router)
    app.add_middleware(NoStore)
    # The last added runs first: a Host the console does not answer to is refused (400) before
    # anything else, so a DNS-rebinding page never reaches a form or the API's links.
    app.add_middleware(SecurityHeaders, hsts=app.state.sessions.secure)
    app.add_middleware(TrustedHosts, allowed_hosts=settings.trusted_hosts())
    return app


class TrustedHosts:
    """Refuses (400) a request whose Host is not one of ``allowed_hosts`` (a DNS-rebinding page
    names its own host), as Starlette's TrustedHostMiddleware does but with IPv6 literals
    ("[::1]:8480") parsed, and ``/healthz`` exempt: container probes reach it by address, not by the
    console's public name, and it answers nothing but "ok"."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: list[str]) -> None:
        self.app = app
        self.allowed_hosts = frozenset(allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host", "")
        try:
            hostname = (urlsplit("//" + host).hostname or "").lower()
        except ValueError:
            hostname = ""
        if hostname not in self.allowed_hosts:
            log.warning("refused a request for another host", host=host[:200])
            response = PlainTextResponse(
                "refused: this console does not answer to this host name (see "
                "GRAFLOW_CONSOLE_PUBLIC_URL / GRAFLOW_CONSOLE_ALLOWED_HOSTS)", status_code=400)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` (and :data:`HSTS` under HTTPS) to every response. Plain ASGI
    (not BaseHTTPMiddleware), so a streamed response (the run page's events) still sees the browser
    leave and stops its WatchRun."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.headers = dict(SECURITY_HEADERS)
        if hsts:
            # Browsers reach the console over HTTPS only: keep them from ever trying plain HTTP.
            self.headers["strict-transport-security"] = HSTS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)


class NoStore:
    """``Cache-Control: no-store`` on every answer that sets no cache policy of its own (the static
    assets do): pages and API answers carry a person's data, which Back after signing out must not
    show from the browser's cache."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_no_store(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).setdefault("cache-control", "no-store")
            await send(message)

        await self.app(scope, receive, with_no_store)
