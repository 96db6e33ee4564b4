"""Sign-in, sign-out and the CSRF guards of the pages' forms, against a live stack."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient

from graflow.devstack import LocalStack
from graflow_examples.etl import etl
from graflow_runtime.access import Role
from tests.console.conftest import BASE_URL, SAME_ORIGIN, console_settings, sign_in

from graflow_console.app import create_app

REBOUND = "http://rebind.attacker.example"


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


def test_sign_in_keeps_the_token_only_in_an_encrypted_lax_cookie(console: TestClient, stack: LocalStack):
    console.cookies.clear()
    token = stack.token_of(Role.VIEWER)
    response = console.post("/login", data={"token": token, "next": "/runs"}, headers=SAME_ORIGIN,
                            follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/runs"
    cookie = response.headers["set-cookie"]
    # Lax: a link from a webhook's message (another site) arrives signed in; no other site's POST
    # carries the cookie.
    assert "HttpOnly" in cookie and "samesite=lax" in cookie.lower()
    assert "secure" not in cookie.lower()  # plain HTTP on a loopback name: a Secure cookie would be lost
    assert "strict-transport-security" not in response.headers
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


def test_a_request_naming_another_host_is_refused_before_anything_else(console: TestClient,
                                                                      stack: LocalStack):
    # DNS rebinding: the attacker's name resolves to the console, and its page's Origin matches its
    # own Host; neither is the console's.
    console.cookies.clear()
    signed_in = console.post(f"{REBOUND}/login", data={"token": stack.token_of(Role.ADMIN)},
                             headers={"origin": REBOUND}, follow_redirects=False)
    assert signed_in.status_code == 400 and "host" in signed_in.text
    assert "graflow_console_session" not in signed_in.cookies
    bearer = {"authorization": f"Bearer {stack.token_of(Role.VIEWER)}"}
    api = console.get(f"{REBOUND}/api/v1/runs", headers=bearer)
    assert api.status_code == 400
    assert console.get(f"{REBOUND}/healthz").json() == {"status": "ok"}  # probes use an address


def test_a_loopback_console_answers_its_loopback_names_only(stack: LocalStack):
    settings = console_settings(stack).model_copy(update={"allowed_hosts": ""})
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8480") as local:
        for base in ("http://127.0.0.1:8480", "http://localhost:8480", "http://[::1]:8480"):
            page = local.get(f"{base}/login")
            assert page.status_code == 200, (base, page.text)
            signed_in = local.post(f"{base}/login", data={"token": stack.token_of(Role.VIEWER)},
                                   headers={"origin": base}, follow_redirects=False)
            assert signed_in.status_code == 303, (base, signed_in.text)
        assert local.get(f"{BASE_URL}/login").status_code == 400


def test_behind_a_tls_proxy_the_cookies_are_secure_and_hsts_is_sent(stack: LocalStack):
    public = "https://console.example.com"
    settings = console_settings(stack).model_copy(update={"public_url": public, "allowed_hosts": ""})
    # The proxy ends TLS and forwards plain HTTP with the public Host.
    with TestClient(create_app(settings), base_url="http://console.example.com") as proxied:
        response = proxied.post("/login", data={"token": stack.token_of(Role.VIEWER)},
                                headers={"origin": public}, follow_redirects=False)
        assert response.status_code == 303, response.text
        assert "secure" in response.headers["set-cookie"].lower()
        assert response.headers["strict-transport-security"].startswith("max-age=")
        # Forms must come from PUBLIC_URL's origin, not from the Host the request names.
        forged = proxied.post("/login", data={"token": stack.token_of(Role.VIEWER)},
                              headers={"origin": "http://console.example.com"})
        assert forged.status_code == 403


def test_a_non_ascii_csrf_token_is_refused_not_a_server_error(console: TestClient, stack: LocalStack):
    sign_in(console, stack, Role.VIEWER)
    response = console.post("/logout", data={"csrf_token": "tökén"}, headers=SAME_ORIGIN)
    assert response.status_code == 403 and "CSRF" in response.text


@pytest.mark.parametrize("token", ["line\nbreak", "tökén", "nul\x00byte", "with space", "x" * 4097])
def test_a_token_grpc_cannot_carry_is_unauthenticated_on_sign_in(console: TestClient, token: str):
    console.cookies.clear()
    response = console.post("/login", data={"token": token}, headers=SAME_ORIGIN)
    assert response.status_code == 401 and "not a Graflow token" in response.text


@pytest.mark.parametrize("header", [b"Bearer t\xc3\xb6k\xc3\xa9n", b"Bearer a\x7fb"])
def test_a_token_grpc_cannot_carry_is_unauthenticated_on_the_api(console: TestClient, header: bytes):
    response = console.get("/api/v1/runs", headers={"authorization": header})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "UNAUTHENTICATED"
    assert "not a Graflow token" in response.json()["error"]["message"]


def test_a_post_with_an_expired_session_returns_to_the_page_of_the_form(console: TestClient):
    console.cookies.clear()
    from_page = console.post("/logout", data={}, headers={"referer": f"{BASE_URL}/runs/r-1?tab=events"},
                             follow_redirects=False)
    assert from_page.status_code == 303
    assert from_page.headers["location"] == "/login?next=/runs/r-1%3Ftab%3Devents"
    elsewhere = console.post("/logout", data={}, headers={"referer": "https://evil.example/runs/x"},
                             follow_redirects=False)
    assert elsewhere.headers["location"] == "/login?next=/runs"
    unnamed = console.post("/logout", data={}, follow_redirects=False)
    assert unnamed.headers["location"] == "/login?next=/runs"


def test_a_flash_message_set_by_one_replica_is_shown_by_another(stack: LocalStack):
    stack.client().register_workflow(etl, name="etl-replicas")
    settings = console_settings(stack).model_copy(update={"session_key": Fernet.generate_key().decode()})
    with TestClient(create_app(settings), base_url=BASE_URL) as first, \
            TestClient(create_app(settings), base_url=BASE_URL) as second:
        csrf = sign_in(first, stack, Role.CLIENT)
        submitted = first.post("/workflows/etl-replicas/runs", follow_redirects=False, headers=SAME_ORIGIN,
                               data={"csrf_token": csrf, "arguments": '{"source": "replicas"}'})
        assert submitted.status_code == 303, submitted.text
        second.cookies = first.cookies
        page = second.get(submitted.headers["location"])
        assert page.status_code == 200 and 'id="flash" class="ok"' in page.text, page.text
        assert "submitted" in page.text
