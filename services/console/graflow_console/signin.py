"""Sign-in and sign-out (``/login``, ``/logout``): the session cookie holds the person's token."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from graflow_console.auth import COOKIE, check_token
from graflow_console.backend import ConsoleError
from graflow_console.web import posted_form, render, sessions_of

router = APIRouter(include_in_schema=False)


def _safe_next(value: object) -> str:
    """Where to go after sign-in: a path of this console only (no open redirect)."""
    text = value if isinstance(value, str) else ""
    if not text.startswith("/") or text.startswith("//") or "\\" in text:
        return "/runs"
    return text


@router.get("/login")
async def login_page(request: Request, next: str = "/runs") -> Response:
    return render(request, "login.html", {"next": _safe_next(next)})


@router.post("/login")
async def login(request: Request) -> Response:
    sessions = sessions_of(request)
    sessions.check_origin(request)
    form = await request.form()
    token = form.get("token")
    next_url = _safe_next(form.get("next"))
    if not isinstance(token, str) or not token.strip():
        return render(request, "login.html", {"next": next_url}, status_code=400,
                      error="enter a token (a bearer token of a role, docs/security.md)")
    token = token.strip()
    try:
        await check_token(request.app.state.backend.as_person(token))
    except ConsoleError as exc:
        return render(request, "login.html", {"next": next_url}, status_code=exc.status_code,
                      error=exc.message)
    response = RedirectResponse(next_url, status_code=303)
    response.set_cookie(value=sessions.cookie_value(token), **sessions.cookie_options())  # type: ignore[arg-type]
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    await posted_form(request)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
