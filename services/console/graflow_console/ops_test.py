"""The operators' pages against a live stack: real workers, queues and dead letters, read and acted
on with the signed-in person's own token; admin actions refused to other roles with the service's
message, and forms refused without their CSRF token or from another origin."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from graflow.devstack import LocalStack
from graflow_runtime import keys
from graflow_runtime.access import Role


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(workers=1, task_modules=["graflow_examples.etl"], role_tokens=True, console=True) as stack:
        yield stack


def origin(stack: LocalStack) -> str:
    parts = urlsplit(stack.console_url)
    return f"{parts.scheme}://{parts.netloc}"


@pytest.fixture(scope="module")
def signed_in(stack: LocalStack) -> Iterator[Callable[[Role], httpx.Client]]:
    """signed_in(role): a browser-like client holding the session of that role's token."""
    clients: dict[Role, httpx.Client] = {}

    def client(role: Role) -> httpx.Client:
        if role not in clients:
            session = httpx.Client(base_url=stack.console_url, timeout=30, headers={"origin": origin(stack)})
            answer = session.post("/login", data={"token": stack.token_of(role), "next": "/runs"})
            assert answer.status_code == 303, answer.text
            clients[role] = session
        return clients[role]

    yield client
    for session in clients.values():
        session.close()


def eventually(check: Callable[[], Any], what: str, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def rows(page: str, row_class: str, attribute: str) -> list[str]:
    return [html.unescape(v) for v in re.findall(rf'<tr class="{row_class}"[^>]*?\b{attribute}="([^"]*)"', page)]


def csrf(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def flash(page: str) -> tuple[str, str]:
    found = re.search(r'<div id="flash" class="(\w+)"[^>]*>(.*?)</div>', page, re.S)
    assert found, "the page shows no flash message"
    return found.group(1), html.unescape(found.group(2))


def dead_letter(stack: LocalStack) -> str:
    """A dead letter made the way it happens: an entry no worker can decode, appended to the
    workers' queue; the worker that reads it dead-letters it. Returns its id."""
    with redis.Redis.from_url(stack.redis_url) as conn:
        original = conn.xadd(keys.queue_stream("default"), {keys.ENVELOPE_FIELD: b"\xff not an envelope"}).decode()

    def letter() -> str | None:
        with stack.operators() as ops:
            return next((d.id for d in ops.dead_letters() if d.original_id == original), None)

    found: str = eventually(letter, f"entry {original} to be dead-lettered")
    return found


def test_the_workers_page_shows_the_live_workers_of_the_stack(signed_in):
    page = signed_in(Role.VIEWER).get("/workers")
    assert page.status_code == 200, page.text
    assert 'id="workers"' in page.text and 'hx-trigger="every' in page.text
    assert len(rows(page.text, "worker", "data-id")) == 1
    assert rows(page.text, "worker", "data-liveness") == ["live"]
    assert "graflow_examples.etl" in page.text or "fetch" in page.text  # its task types


def test_the_queues_page_shows_the_default_queue_with_its_worker(signed_in):
    page = signed_in(Role.VIEWER).get("/queues")
    assert page.status_code == 200, page.text
    assert "default" in rows(page.text, "queue", "data-queue")
    row = re.search(r'<tr class="queue" data-queue="default">(.*?)</tr>', page.text, re.S)
    assert row and '<td class="workers">1</td>' in row.group(1)


def test_a_client_and_a_viewer_are_refused_replay_and_delete_with_the_service_message(signed_in, stack):
    letter = dead_letter(stack)
    for role in (Role.CLIENT, Role.VIEWER):
        session = signed_in(role)
        page = session.get("/dead-letters")
        assert page.status_code == 200, page.text
        assert letter in rows(page.text, "dead-letter", "data-id")
        for action in ("replay", "delete"):
            refused = session.post(f"/dead-letters/{letter}/{action}", data={"csrf_token": csrf(page.text)})
            assert refused.status_code == 403, refused.text
            kind, message = flash(refused.text)
            assert kind == "error"
            assert f"role {role.value} may not call" in message
            assert letter in rows(refused.text, "dead-letter", "data-id")  # still there


def test_an_admin_replays_a_dead_letter_from_the_page(signed_in, stack):
    letter = dead_letter(stack)
    admin = signed_in(Role.ADMIN)
    page = admin.get("/dead-letters")
    answer = admin.post(f"/dead-letters/{letter}/replay", data={"csrf_token": csrf(page.text)})
    assert answer.status_code == 303 and answer.headers["location"] == "/dead-letters"
    after = admin.get("/dead-letters")
    assert flash(after.text) == ("ok", f"dead letter {letter} replayed: it is back on its queue as a new delivery")
    assert letter not in rows(after.text, "dead-letter", "data-id")


def test_an_admin_deletes_a_dead_letter_from_the_page_and_a_second_delete_is_404(signed_in, stack):
    letter = dead_letter(stack)
    admin = signed_in(Role.ADMIN)
    token = csrf(admin.get("/dead-letters").text)
    answer = admin.post(f"/dead-letters/{letter}/delete", data={"csrf_token": token})
    assert answer.status_code == 303
    after = admin.get("/dead-letters")
    assert flash(after.text) == ("ok", f"dead letter {letter} deleted")
    assert letter not in rows(after.text, "dead-letter", "data-id")
    again = admin.post(f"/dead-letters/{letter}/delete", data={"csrf_token": token})
    assert again.status_code == 404
    assert flash(again.text)[0] == "error"


def test_dead_letter_forms_are_refused_without_their_csrf_token_or_from_another_origin(signed_in, stack):
    letter = dead_letter(stack)
    admin = signed_in(Role.ADMIN)
    token = csrf(admin.get("/dead-letters").text)
    assert admin.post(f"/dead-letters/{letter}/delete", data={}).status_code == 403
    assert admin.post(f"/dead-letters/{letter}/delete", data={"csrf_token": "forged"}).status_code == 403
    elsewhere = admin.post(
        f"/dead-letters/{letter}/delete", data={"csrf_token": token}, headers={"origin": "https://evil.example"}
    )
    assert elsewhere.status_code == 403
    assert letter in rows(admin.get("/dead-letters").text, "dead-letter", "data-id")


def test_the_pages_need_a_sign_in(stack):
    with httpx.Client(base_url=stack.console_url) as anonymous:
        for path in ("/workers", "/queues", "/dead-letters"):
            answer = anonymous.get(path)
            assert answer.status_code == 303
            assert answer.headers["location"] == f"/login?next={path}"
