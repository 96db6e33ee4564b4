"""What a new user met on the console's pages (issue 11 follow-up): pages with a person's data are
not cached, unknown paths and wrong methods get the console's error page, and the small texts that
explain what a page shows."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from graflow.devstack import LocalStack
from graflow_examples.etl import etl
from graflow_runtime.access import Role
from tests.console.conftest import sign_in


def test_pages_of_a_session_are_not_cached_and_static_assets_are(console: TestClient, stack: LocalStack):
    sign_in(console, stack, Role.VIEWER)
    for path in ("/runs", "/workflows", "/workers", "/queues"):
        page = console.get(path)
        assert page.status_code == 200, (path, page.text)
        assert page.headers["cache-control"] == "no-store", path
    assert console.get("/static/console.css").headers["cache-control"].startswith("public")


def test_an_unknown_page_and_a_wrong_method_show_the_error_page(console: TestClient, stack: LocalStack):
    sign_in(console, stack, Role.VIEWER)
    missing = console.get("/no-such-page")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")
    assert 'id="flash"' in missing.text and "no such page: /no-such-page" in missing.text
    wrong = console.get("/logout")
    assert wrong.status_code == 405
    assert wrong.headers["content-type"].startswith("text/html") and "detail" not in wrong.text
    assert "GET is not allowed on /logout" in wrong.text


def test_the_queues_page_explains_length(console: TestClient, stack: LocalStack):
    sign_in(console, stack, Role.VIEWER)
    page = console.get("/queues").text
    assert "<em>Length</em>: entries kept in the queue's streams" in page


def test_worker_ids_do_not_wrap(console: TestClient):
    assert "#workers td:first-child { white-space: nowrap; }" in console.get("/static/console.css").text


def test_a_succeeded_run_shows_its_result_and_an_ended_header(console: TestClient, stack: LocalStack):
    with stack.client() as client:
        run = client.submit(etl, labels={"env": "dev"})
        run.result(timeout=60)
    sign_in(console, stack, Role.VIEWER)
    page = console.get(f"/runs/{run.id}")
    assert page.status_code == 200, page.text
    assert 'id="run-results"' in page.text
    assert '<pre class="result" data-node-id="' in page.text
    # "ended ... (0.4 s) · env=dev": a space before the labels' separator.
    assert re.search(r"\(\d[^)]*\) · <code>env=dev</code>", page.text), page.text
