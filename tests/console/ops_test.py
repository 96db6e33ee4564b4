"""The operators' pages against a live stack: real workers, queues and dead letters, read and acted
on with the signed-in person's own token; admin actions refused to other roles with the service's
message, and forms refused without their CSRF token or from another origin."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from graflow.devstack import LocalStack
from graflow_runtime import keys
from graflow_runtime.access import Role
from tests.console.conftest import SAME_ORIGIN, sign_in
from tests.e2e.conftest import wait_for


def rows(page: str, row_class: str, attribute: str) -> list[str]:
    """The ``attribute`` of each ``<tr class="row_class">`` of the page."""
    found = re.findall(rf'<tr class="{row_class}"[^>]*?\b{attribute}="([^"]*)"', page)
    return [html.unescape(value) for value in found]


def flash(page: str) -> tuple[str, str]:
    found = re.search(r'<div id="flash" class="(\w+)"[^>]*>(.*?)</div>', page, re.S)
    assert found, "the page shows no flash message"
    return found.group(1), html.unescape(found.group(2))


def dead_letter(stack: LocalStack) -> str:
    """A dead letter made the way it happens: an entry no worker can decode, appended to the
    workers' queue, is dead-lettered by the worker that reads it. Returns the letter's id."""
    with redis.Redis.from_url(stack.redis_url) as conn:
        garbage = {keys.ENVELOPE_FIELD: b"\xff not an envelope"}
        original = conn.xadd(keys.queue_stream("default"), garbage).decode()

    found: list[str] = []

    def dead_lettered() -> bool:
        with stack.operators() as ops:
            found[:] = [d.id for d in ops.dead_letters() if d.original_id == original]
        return bool(found)

    wait_for(dead_lettered, what=f"entry {original} to be dead-lettered")
    return found[0]


def post(console: TestClient, path: str, data: dict[str, str], **headers: str) -> Any:
    return console.post(path, data=data, headers={**SAME_ORIGIN, **headers}, follow_redirects=False)


def test_the_workers_page_shows_the_live_workers_of_the_stack(console: TestClient, stack: LocalStack):
    sign_in(console, stack, Role.VIEWER)
    page = console.get("/workers")
    assert page.status_code == 200, page.text
    assert 'id="workers"' in page.text and 'hx-trigger="every' in page.text
    with stack.operators() as ops:
        (worker,) = ops.workers()
    assert rows(page.text, "worker", "data-id") == [worker.worker_id]
    assert rows(page.text, "worker", "data-liveness") == ["live"]
    assert worker.task_types and all(html.escape(t) in page.text for t in worker.task_types)


def test_the_queues_page_shows_the_default_queue_with_its_worker(console: TestClient, stack: LocalStack):
    sign_in(console, stack, Role.VIEWER)
    page = console.get("/queues")
    assert page.status_code == 200, page.text
    row = re.search(r'<tr class="queue" data-queue="default">(.*?)</tr>', page.text, re.S)
    assert row, page.text
    assert '<td class="workers">1</td>' in row.group(1)


def test_a_client_and_a_viewer_are_refused_replay_and_delete_with_the_service_message(
    console: TestClient, stack: LocalStack
):
    letter = dead_letter(stack)
    for role in (Role.CLIENT, Role.VIEWER):
        csrf = sign_in(console, stack, role)
        page = console.get("/dead-letters")
        assert 'id="dead-letter-by-id"' in page.text
        if role == Role.VIEWER:
            assert page.status_code == 200, page.text
            assert letter in rows(page.text, "dead-letter", "data-id")
        else:  # a client may not even list them: the page says so, and keeps its by-id form
            assert page.status_code == 403
            listing = "role client may not call /graflow_api.v1.Coordinator/ListDeadLetters"
            assert listing in flash(page.text)[1]
        for action, method in (("replay", "ReplayDeadLetters"), ("delete", "DeleteDeadLetters")):
            for path, data in (
                (f"/dead-letters/{letter}/{action}", {"csrf_token": csrf}),
                ("/dead-letters/by-id", {"csrf_token": csrf, "id": letter, "action": action}),
            ):
                refused = post(console, path, data)
                assert refused.status_code == 403, refused.text
                kind, message = flash(refused.text)
                assert kind == "error"
                assert f"role {role.value} may not call /graflow_api.v1.Coordinator/{method}" in message
                # The console's own words name the page's action, the service's its method.
                assert message.startswith(f"{action} refused: "), message
    with stack.operators() as ops:
        assert letter in [d.id for d in ops.dead_letters()]  # still there


@pytest.mark.parametrize("form", ["row", "by-id"])
def test_an_admin_replays_a_dead_letter_from_the_page(console: TestClient, stack: LocalStack, form: str):
    letter = dead_letter(stack)
    csrf = sign_in(console, stack, Role.ADMIN)
    if form == "row":
        answer = post(console, f"/dead-letters/{letter}/replay", {"csrf_token": csrf})
    else:
        by_id = {"csrf_token": csrf, "id": f" {letter} ", "action": "replay"}
        answer = post(console, "/dead-letters/by-id", by_id)
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/dead-letters"
    after = console.get("/dead-letters")
    replayed = f"dead letter {letter} replayed: it is back on its queue as a new delivery"
    assert flash(after.text) == ("ok", replayed)
    assert letter not in rows(after.text, "dead-letter", "data-id")


def test_an_admin_deletes_a_dead_letter_from_the_page_and_a_second_delete_is_404(
    console: TestClient, stack: LocalStack
):
    letter = dead_letter(stack)
    csrf = sign_in(console, stack, Role.ADMIN)
    answer = post(console, f"/dead-letters/{letter}/delete", {"csrf_token": csrf})
    assert answer.status_code == 303, answer.text
    after = console.get("/dead-letters")
    assert flash(after.text) == ("ok", f"dead letter {letter} deleted")
    assert letter not in rows(after.text, "dead-letter", "data-id")
    with stack.operators() as ops:
        assert letter not in [d.id for d in ops.dead_letters()]
    again = post(console, f"/dead-letters/{letter}/delete", {"csrf_token": csrf})
    assert again.status_code == 404
    assert flash(again.text)[0] == "error"


def test_dead_letter_forms_are_refused_without_their_csrf_token_or_from_another_origin(
    console: TestClient, stack: LocalStack
):
    letter = dead_letter(stack)
    csrf = sign_in(console, stack, Role.ADMIN)
    assert post(console, f"/dead-letters/{letter}/delete", {}).status_code == 403
    assert post(console, f"/dead-letters/{letter}/delete", {"csrf_token": "forged"}).status_code == 403
    elsewhere = post(console, f"/dead-letters/{letter}/delete", {"csrf_token": csrf}, origin="https://evil.example")
    assert elsewhere.status_code == 403
    assert letter in rows(console.get("/dead-letters").text, "dead-letter", "data-id")


def test_the_operators_pages_need_a_sign_in(console: TestClient):
    console.cookies.clear()
    for path in ("/workers", "/queues", "/dead-letters"):
        answer = console.get(path, follow_redirects=False)
        assert answer.status_code == 303
        assert answer.headers["location"] == f"/login?next={path}"
