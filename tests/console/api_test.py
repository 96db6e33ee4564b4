"""The JSON HTTP API against a live stack: the console process in front of the real services,
called with the token of each role, and every answer checked against the console's own OpenAPI
document (the API does what it says)."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import redis
from fastapi.testclient import TestClient
from httpx import Response

from graflow.devstack import LocalStack
from graflow_examples.approval import release
from graflow_runtime.access import Role
from graflow_runtime.runids import new_run_id
from tests.console.conftest import BASE_URL, console_settings
from tests.e2e.conftest import wait_for

from graflow_console.app import create_app

API = "/api/v1"
UNKNOWN_RUN = new_run_id()
# Every operation of the API (path -> methods), as the common rules of issue 11 list them.
OPERATIONS = {
    f"{API}/runs": {"get"},
    f"{API}/runs/{{run_id}}": {"get"},
    f"{API}/runs/{{run_id}}/cancel": {"post"},
    f"{API}/workflows": {"get"},
    f"{API}/workflows/{{name}}/runs": {"post"},
    f"{API}/feedback": {"get"},
    f"{API}/runs/{{run_id}}/feedback/{{request_id}}": {"get", "post"},
}


@pytest.fixture(scope="module")
def http(stack: LocalStack, console: TestClient) -> TestClient:
    """The console, with the examples' release workflow registered (build >> deploy; deploy asks
    for an approval, then for a region) as a client would register it."""
    with stack.client() as client:
        client.register_workflow(release, description="approve, deploy", defaults={"channel": "stable"})
    return console


@pytest.fixture(scope="module")
def openapi(console: TestClient) -> dict[str, Any]:
    answer = console.get("/api/openapi.json")
    assert answer.status_code == 200, answer.text
    document: dict[str, Any] = answer.json()
    return document


def as_role(stack: LocalStack, role: Role) -> dict[str, str]:
    return {"authorization": f"Bearer {stack.token_of(role)}"}


def conforms(openapi: dict[str, Any], path: str, method: str, answer: Response) -> Any:
    """The answer's JSON, after validating it against the schema the document gives for its status
    (that code's, else "default")."""
    responses = openapi["paths"][path][method]["responses"]
    described = responses.get(str(answer.status_code)) or responses["default"]
    schema = described["content"]["application/json"]["schema"]
    # "#/components/schemas/..." references resolve against the root schema: give it the components.
    jsonschema.Draft202012Validator({**schema, "components": openapi["components"]}).validate(answer.json())
    return answer.json()


def submit(http: TestClient, stack: LocalStack, **body: Any) -> dict[str, Any]:
    answer = http.post(f"{API}/workflows/release/runs", json=body, headers=as_role(stack, Role.CLIENT))
    assert answer.status_code == 201, answer.text
    submitted: dict[str, Any] = answer.json()
    return submitted


def waiting_request(http: TestClient, stack: LocalStack, run_id: str) -> dict[str, Any]:
    """The run's pending feedback request, once there is one."""
    pending: list[dict[str, Any]] = []

    def asked() -> bool:
        answer = http.get(f"{API}/feedback", params={"run_id": run_id}, headers=as_role(stack, Role.VIEWER))
        assert answer.status_code == 200, answer.text
        pending[:] = [r for r in answer.json()["requests"] if r["state"] == "PENDING"]
        return bool(pending)

    wait_for(asked, what=f"a pending feedback request of {run_id}")
    return pending[0]


def test_the_openapi_document_describes_every_operation_with_its_bodies_errors_and_bearer_auth(openapi):
    assert openapi["openapi"].startswith("3.")
    assert openapi["info"]["title"] and openapi["info"]["version"]
    api_paths = {path: set(ops) for path, ops in openapi["paths"].items() if path.startswith(API)}
    assert api_paths == OPERATIONS
    # Nothing but the API is published (pages, static files and sign-in are not API).
    assert set(openapi["paths"]) == set(OPERATIONS)
    schemes = openapi["components"]["securitySchemes"]
    assert [s["scheme"] for s in schemes.values()] == ["bearer"]
    schemas = openapi["components"]["schemas"]
    for name in ("Run", "NodeStatus", "RunList", "Submitted", "FeedbackRequest", "ErrorBody", "Workflow"):
        jsonschema.Draft202012Validator.check_schema(schemas[name])
    for path, operations in OPERATIONS.items():
        for method in operations:
            operation = openapi["paths"][path][method]
            assert operation["security"] == [{name: []} for name in schemes], (path, method)
            responses = operation["responses"]
            ok = next(code for code in responses if code.startswith("2"))
            assert "$ref" in responses[ok]["content"]["application/json"]["schema"], (path, method)
            for code in ("400", "401", "403", "404", "409", "503", "default"):
                assert responses[code]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorBody"
                }, (path, method, code)
            # Refused input is a 400 with ErrorBody, never FastAPI's 422.
            assert "422" not in responses, (path, method)
    # Every reference resolves within the document.
    refs = set()

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            refs.update(v for k, v in node.items() if k == "$ref")
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(openapi)
    assert refs and all(ref.removeprefix("#/components/schemas/") in schemas for ref in refs)


def test_a_request_without_a_token_or_with_an_unknown_one_is_401(console, openapi):
    http = console
    answer = http.get(f"{API}/runs")
    assert answer.status_code == 401
    body = conforms(openapi, f"{API}/runs", "get", answer)
    assert body["error"]["code"] == "UNAUTHENTICATED"
    assert "Authorization: Bearer" in body["error"]["message"]
    answer = http.get(f"{API}/runs", headers={"authorization": "Bearer not-a-token"})
    assert answer.status_code == 401
    assert conforms(openapi, f"{API}/runs", "get", answer)["error"]["code"] == "UNAUTHENTICATED"


def test_a_submitted_run_is_answered_through_the_api_and_succeeds(http, stack, openapi):
    path = f"{API}/workflows/{{name}}/runs"
    body = {"arguments": {"ticket": 7}, "labels": {"team": "api"}}
    answer = http.post(f"{API}/workflows/release/runs", json=body,
                       headers=as_role(stack, Role.CLIENT))
    assert answer.status_code == 201, answer.text
    submitted = conforms(openapi, path, "post", answer)
    run_id = submitted["run_id"]
    assert submitted["created"] is True
    assert submitted["url"] == f"{BASE_URL}/runs/{run_id}"

    approval = waiting_request(http, stack, run_id)
    assert (approval["kind"], approval["node_id"]) == ("APPROVAL", "deploy")
    assert approval["url"].endswith(f"/runs/{run_id}/feedback/{approval['request_id']}")
    one = f"{API}/runs/{{run_id}}/feedback/{{request_id}}"
    answer = http.get(
        f"{API}/runs/{run_id}/feedback/{approval['request_id']}", headers=as_role(stack, Role.VIEWER)
    )
    assert conforms(openapi, one, "get", answer)["prompt"] == approval["prompt"]

    answer = http.post(f"{API}/runs/{run_id}/feedback/{approval['request_id']}",
                       json={"approved": True, "reason": "looks good"}, headers=as_role(stack, Role.CLIENT))
    assert answer.status_code == 200, answer.text
    answered = conforms(openapi, one, "post", answer)
    assert answered["state"] == "ANSWERED"
    assert answered["response"]["approved"] is True
    assert answered["response"]["responded_by"].startswith("HTTP API (token ")

    selection = waiting_request(http, stack, run_id)
    assert (selection["kind"], selection["options"]) == ("SELECTION", ["eu", "us"])
    answer = http.post(f"{API}/runs/{run_id}/feedback/{selection['request_id']}",
                       json={"selected": "eu"}, headers=as_role(stack, Role.CLIENT))
    assert answer.status_code == 200, answer.text

    def status() -> str:
        return str(http.get(f"{API}/runs/{run_id}", headers=as_role(stack, Role.VIEWER)).json()["status"])

    wait_for(lambda: status() == "SUCCEEDED", what=f"run {run_id} to succeed")
    answer = http.get(f"{API}/runs/{run_id}", headers=as_role(stack, Role.VIEWER))
    run = conforms(openapi, f"{API}/runs/{{run_id}}", "get", answer)
    assert run["workflow_name"] == "release"
    assert run["labels"] == {"team": "api"}
    assert {n["node_id"]: n["state"] for n in run["nodes"]} == {"build": "SUCCEEDED", "deploy": "SUCCEEDED"}
    assert run["error"] is None and run["parent"] is None
    assert run["results"] == {"deploy": "1.4.2 deployed to eu"}


def test_a_submit_without_an_idempotency_key_is_sent_with_one(http, stack):
    """gRPC retries SubmitRun on UNAVAILABLE: without a key, a retry could create a second run."""
    run_id = submit(http, stack)["run_id"]
    store = redis.Redis.from_url(stack.redis_url)
    try:
        keyed = [key for key in store.scan_iter(match="*:idem:api-*") if store.get(key) == run_id.encode()]
    finally:
        store.close()
    assert len(keyed) == 1, keyed
    again = http.post(f"{API}/workflows/release/runs", json={"idempotency_key": "mine"},
                      headers=as_role(stack, Role.CLIENT)).json()
    assert http.post(f"{API}/workflows/release/runs", json={"idempotency_key": "mine"},
                     headers=as_role(stack, Role.CLIENT)).json()["run_id"] == again["run_id"]


def test_runs_are_listed_with_the_filters_of_the_run_list(http, stack, openapi):
    first = submit(http, stack, labels={"batch": "one"})["run_id"]
    second = submit(http, stack, labels={"batch": "two"})["run_id"]
    viewer = as_role(stack, Role.VIEWER)

    def listed(**params: Any) -> list[str]:
        answer = http.get(f"{API}/runs", params={"limit": 1000, **params}, headers=viewer)
        assert answer.status_code == 200, answer.text
        return [r["run_id"] for r in conforms(openapi, f"{API}/runs", "get", answer)["runs"]]

    everything = listed(workflow="release")
    assert everything.index(second) < everything.index(first)  # newest first
    assert first in listed(label="batch=one") and second not in listed(label="batch=one")
    assert listed(workflow="no-such-workflow") == []
    created = http.get(f"{API}/runs/{first}", headers=viewer).json()["created_at_ms"]
    assert first not in listed(created_after_ms=created + 1)
    assert first in listed(created_after_ms=created, created_before_ms=created + 1)
    wait_for(lambda: second in listed(status="paused"), what=f"run {second} to pause")
    assert second not in listed(status="SUCCEEDED")
    page = http.get(f"{API}/runs", params={"limit": 1, "workflow": "release"}, headers=viewer).json()
    assert len(page["runs"]) <= 1 and page["next_page_token"]


def test_cancel_needs_a_client_role_and_ends_the_run(http, stack, openapi):
    run_id = submit(http, stack)["run_id"]
    path = f"{API}/runs/{{run_id}}/cancel"
    url = f"{API}/runs/{run_id}/cancel"
    refused = http.post(url, json={"reason": "no"}, headers=as_role(stack, Role.VIEWER))
    assert refused.status_code == 403
    assert conforms(openapi, path, "post", refused)["error"]["code"] == "PERMISSION_DENIED"
    answer = http.post(url, json={"reason": "not today"}, headers=as_role(stack, Role.CLIENT))
    assert answer.status_code == 200, answer.text
    canceled = conforms(openapi, path, "post", answer)
    assert canceled["status"] == "CANCELED"
    assert canceled["message"] == "not today"
    # Canceling an ended run changes nothing and returns it (CancelRun's contract).
    again = http.post(url, json={"reason": "twice"}, headers=as_role(stack, Role.CLIENT))
    assert again.status_code == 200, again.text
    assert (again.json()["status"], again.json()["message"]) == ("CANCELED", "not today")


def test_a_run_is_submitted_without_a_body(http, stack, openapi):
    answer = http.post(f"{API}/workflows/release/runs", headers=as_role(stack, Role.CLIENT))
    assert answer.status_code == 201, answer.text
    submitted = conforms(openapi, f"{API}/workflows/{{name}}/runs", "post", answer)
    http.post(f"{API}/runs/{submitted['run_id']}/cancel", headers=as_role(stack, Role.CLIENT))
    assert not openapi["paths"][f"{API}/workflows/{{name}}/runs"]["post"]["requestBody"].get("required")


def test_api_answers_are_not_cached(http, stack):
    answer = http.get(f"{API}/runs", headers=as_role(stack, Role.VIEWER))
    assert answer.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("get", f"{API}/runs/{UNKNOWN_RUN}", None, 404, "NOT_FOUND"),
        ("get", f"{API}/runs/not-a-run-id", None, 400, "INVALID_ARGUMENT"),
        ("post", f"{API}/workflows/no-such-workflow/runs", {}, 404, "NOT_FOUND"),
        ("post", f"{API}/workflows/release/runs", {"arguments": [1, 2]}, 400, "INVALID_ARGUMENT"),
        ("get", f"{API}/runs?label=no-equals-sign", None, 400, "INVALID_ARGUMENT"),
        ("get", f"{API}/runs?status=sleeping", None, 400, "INVALID_ARGUMENT"),
        ("get", f"{API}/runs?limit=0", None, 400, "INVALID_ARGUMENT"),
        ("get", f"{API}/runs/{UNKNOWN_RUN}/feedback/x.0.1", None, 404, "NOT_FOUND"),
        ("post", f"{API}/runs/{UNKNOWN_RUN}/cancel", {}, 404, "NOT_FOUND"),
        # The routing's own answers have the same body.
        ("get", f"{API}/no-such-path", None, 404, "NOT_FOUND"),
        ("get", "/api/v2/runs", None, 404, "NOT_FOUND"),
        ("delete", f"{API}/runs", None, 405, "UNIMPLEMENTED"),
    ],
)
def test_errors_map_to_http_statuses_with_the_error_body(console, stack, method, path, body, status, code):
    http = console
    answer = http.request(method, path, json=body, headers=as_role(stack, Role.CLIENT))
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code
    assert error["message"]


def test_an_answer_that_does_not_fit_the_request_is_400_and_a_viewer_cannot_answer(http, stack):
    run_id = submit(http, stack)["run_id"]
    approval = waiting_request(http, stack, run_id)
    url = f"{API}/runs/{run_id}/feedback/{approval['request_id']}"
    refused = http.post(url, json={"approved": True}, headers=as_role(stack, Role.VIEWER))
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "PERMISSION_DENIED")
    wrong = http.post(url, json={"text": "yes"}, headers=as_role(stack, Role.CLIENT))
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (400, "INVALID_ARGUMENT")
    workflows = http.get(f"{API}/workflows", headers=as_role(stack, Role.VIEWER)).json()["workflows"]
    assert [(w["name"], w["default_arguments"]) for w in workflows] == [("release", {"channel": "stable"})]


def test_links_use_the_public_url_when_the_console_sits_behind_a_proxy(http, stack):
    settings = console_settings(stack).model_copy(update={"public_url": "https://console.example.com"})
    with TestClient(create_app(settings), base_url=BASE_URL) as proxied:
        answer = proxied.post(f"{API}/workflows/release/runs", json={}, headers=as_role(stack, Role.CLIENT))
        assert answer.status_code == 201, answer.text
        run_id = answer.json()["run_id"]
        assert answer.json()["url"] == f"https://console.example.com/runs/{run_id}"
        run = proxied.get(f"{API}/runs/{run_id}", headers=as_role(stack, Role.VIEWER)).json()
        assert run["url"] == f"https://console.example.com/runs/{run_id}"
