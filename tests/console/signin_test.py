"""Sign-in, sign-out and the CSRF guards of the pages' forms, against a live stack."""

from __future__ import annotations

from fastapi.testclient import TestClient

from graflow.devstack import LocalStack
from graflow_runtime.access import Role
from tests.console.conftest import SAME_ORIGIN, sign_in


def test_pages_redirect_to_the_sign_in_page_until_signed_in(console: TestClient):
    console.cookies.clear()
    response = console.get("/runs?status=RUNNING", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/runs%3Fstatus%3DRUNNING"
    page = console.get("/login")
    assert 'id="login-form"' in page.text and 'id="token"' in page.text


def test_a_wrong_token_is_refused_with_the_services_message(console: TestClient):
    console.cookies.clear()
    response = console.post("/login", data={"token": "not-a-token"}, headers=SAME_ORIGIN)
    assert response.status_code == 401
    assert 'id="flash" class="error"' in response.text
    assert "not accepted" in response.text
    assert "graflow_console_session" not in response.cookies


def test_sign_in_keeps_the_token_only_in_an_encrypted_strict_cookie(console: TestClient, stack: LocalStack):
    console.cookies.clear()
    token = stack.token_of(Role.VIEWER)
    response = console.post("/login", data={"token": token, "next": "/runs"}, headers=SAME_ORIGIN,
                            follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/runs"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert token not in cookie
    assert console.get("/runs").status_code == 200


def test_sign_out_needs_the_csrf_token_and_ends_the_session(console: TestClient, stack: LocalStack):
    csrf = sign_in(console, stack, Role.VIEWER)
    refused = console.post("/logout", data={}, headers=SAME_ORIGIN)
    assert refused.status_code == 403 and "CSRF" in refused.text
    forged = console.post("/logout", data={"csrf_token": csrf}, headers={"origin": "https://evil.example"})
    assert forged.status_code == 403 and "own pages" in forged.text
    done = console.post("/logout", data={"csrf_token": csrf}, headers=SAME_ORIGIN, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/login"
    assert console.get("/runs", follow_redirects=False).status_code == 303


def test_a_referer_of_the_console_stands_for_a_missing_origin(console: TestClient, stack: LocalStack):
    csrf = sign_in(console, stack, Role.VIEWER)
    response = console.post("/logout", data={"csrf_token": csrf},
                            headers={"referer": "http://testserver/runs"}, follow_redirects=False)
    assert response.status_code == 303


def test_sign_in_from_another_origin_is_refused(console: TestClient, stack: LocalStack):
    console.cookies.clear()
    response = console.post("/login", data={"token": stack.token_of(Role.ADMIN)},
                            headers={"origin": "https://evil.example"})
    assert response.status_code == 403


def test_the_next_page_after_sign_in_stays_on_the_console(console: TestClient, stack: LocalStack):
    console.cookies.clear()
    response = console.post("/login", data={"token": stack.token_of(Role.VIEWER), "next": "//evil.example/x"},
                            headers=SAME_ORIGIN, follow_redirects=False)
    assert response.headers["location"] == "/runs"


def test_static_assets_and_health_are_served_by_the_console(console: TestClient):
    htmx = console.get("/static/htmx.min.js")
    assert htmx.status_code == 200 and "htmx" in htmx.text[:200]
    cached = console.get("/static/htmx.min.js", headers={"if-none-match": htmx.headers["etag"]})
    assert cached.status_code == 304
    assert console.get("/healthz").json() == {"status": "ok"}
    openapi = console.get("/api/openapi.json").json()
    assert openapi["info"]["title"] == "Graflow console API"
    assert console.get("/docs").status_code == 404  # no Swagger UI: it would load from a CDN
    policy = console.get("/login").headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
