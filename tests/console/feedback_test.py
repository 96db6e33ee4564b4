"""Feedback requests answered from their page, one form per kind, against a live stack."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from graflow.devstack import LocalStack
from graflow_examples.approval import release
from graflow_runtime.access import Role
from tests.console.conftest import SAME_ORIGIN, sign_in
from tests.console.tasks import questions


def waiting_page(console: TestClient, run_id: str, request_id: str, timeout_s: float = 30.0) -> Response:
    """The request's page once the request is recorded and pending."""
    deadline = time.monotonic() + timeout_s
    while True:
        page = console.get(f"/runs/{run_id}/feedback/{request_id}")
        if page.status_code == 200 and 'id="feedback-form"' in page.text:
            return page
        assert time.monotonic() < deadline, (page.status_code, page.text[-500:])
        time.sleep(0.2)


def answer(console: TestClient, csrf: str, run_id: str, request_id: str, data: dict, **kw) -> Response:
    return console.post(f"/runs/{run_id}/feedback/{request_id}", data={"csrf_token": csrf, **data},
                        headers=SAME_ORIGIN, **kw)


def test_an_approval_and_a_selection_are_answered_from_their_pages(console: TestClient, stack: LocalStack):
    run = stack.client().submit(release)
    csrf = sign_in(console, stack, Role.CLIENT)
    page = waiting_page(console, run.id, "deploy.0.1")
    assert 'id="feedback-approve"' in page.text and 'id="feedback-reject"' in page.text
    assert "deploy 1.4.2?" in page.text
    run_page = console.get(f"/runs/{run.id}")
    assert f'href="/runs/{run.id}/feedback/deploy.0.1"' in run_page.text  # listed in #feedback

    done = answer(console, csrf, run.id, "deploy.0.1", {"decision": "approve"}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/runs/{run.id}"

    page = waiting_page(console, run.id, "deploy.0.2")
    assert page.text.count('name="selected"') == 2 and 'id="feedback-submit"' in page.text
    bad = answer(console, csrf, run.id, "deploy.0.2", {"selected": "mars"})
    assert bad.status_code == 400 and '<div id="flash" class="error"' in bad.text
    assert answer(console, csrf, run.id, "deploy.0.2", {"selected": "eu"}).status_code == 200
    assert run.result(timeout=60) == "1.4.2 deployed to eu"
    answered = console.get(f"/runs/{run.id}/feedback/deploy.0.2")
    assert 'data-state="ANSWERED"' in answered.text and 'id="feedback-form"' not in answered.text
    again = answer(console, csrf, run.id, "deploy.0.2", {"selected": "us"})
    assert again.status_code == 409 and '<div id="flash" class="error"' in again.text


def test_text_multi_selection_and_custom_forms(console: TestClient, stack: LocalStack):
    run = stack.client().submit(questions)
    csrf = sign_in(console, stack, Role.CLIENT)
    page = waiting_page(console, run.id, "ask.0.1")
    assert 'name="text"' in page.text
    answer(console, csrf, run.id, "ask.0.1", {"text": "all fixed"})
    page = waiting_page(console, run.id, "ask.0.2")
    assert page.text.count('name="selected_multiple"') == 3
    answer(console, csrf, run.id, "ask.0.2", {"selected_multiple": ["eu", "ap"]})
    page = waiting_page(console, run.id, "ask.0.3")
    assert 'name="custom_json"' in page.text and "rps" in page.text  # the metadata is shown
    not_json = answer(console, csrf, run.id, "ask.0.3", {"custom_json": "{nope"})
    assert not_json.status_code == 400
    answer(console, csrf, run.id, "ask.0.3", {"custom_json": '{"max": 5}'})
    assert run.result(timeout=60) == {"text": "all fixed", "regions": ["eu", "ap"], "custom": {"max": 5}}


def test_a_viewer_sees_the_form_but_is_refused_the_answer(console: TestClient, stack: LocalStack):
    run = stack.client().submit(release)
    csrf = sign_in(console, stack, Role.VIEWER)
    waiting_page(console, run.id, "deploy.0.1")
    refused = answer(console, csrf, run.id, "deploy.0.1", {"decision": "approve"})
    assert refused.status_code == 403 and '<div id="flash" class="error"' in refused.text
    # The waiting node's details, read from the history of a run that has not ended.
    details = console.get(f"/runs/{run.id}/nodes/deploy")
    assert details.status_code == 200 and "WAITING" in details.text and "deploy.0.1" in details.text
    assert "NODE_WAITING" in details.text
    run.cancel("test over")


@pytest.mark.parametrize("decision", ["", "maybe"])
def test_an_approval_needs_a_decision(console: TestClient, stack: LocalStack, decision: str):
    run = stack.client().submit(release)
    csrf = sign_in(console, stack, Role.CLIENT)
    waiting_page(console, run.id, "deploy.0.1")
    assert answer(console, csrf, run.id, "deploy.0.1", {"decision": decision}).status_code == 400
    run.cancel("test over")


def test_a_closed_request_says_why(console: TestClient, stack: LocalStack):
    client = stack.client()
    run = client.submit(release)
    sign_in(console, stack, Role.VIEWER)
    waiting_page(console, run.id, "deploy.0.1")
    client.cancel(run.id, reason="not this week")
    deadline = time.monotonic() + 30
    while 'data-state="CLOSED"' not in (page := console.get(f"/runs/{run.id}/feedback/deploy.0.1")).text:
        assert time.monotonic() < deadline, page.text[-500:]
        time.sleep(0.2)
    assert 'id="feedback-closed"' in page.text
    assert "Its run was canceled while it waited (not this week)." in page.text
