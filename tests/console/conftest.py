"""The console against a real local stack: redis-server and the four services as processes, one
token per role (LocalStack(role_tokens=True)), and the console application driven in process by
Starlette's TestClient (its requests reach the services over gRPC as the signed-in person)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from graflow.devstack import LocalStack
from graflow_runtime.access import Role

from graflow_console.app import create_app
from graflow_console.settings import ConsoleSettings

BASE_URL = "http://testserver"
# What a browser sends with a form of the console's own pages.
SAME_ORIGIN = {"origin": BASE_URL}
TASK_MODULES = ["graflow_examples.etl", "graflow_examples.approval", "tests.console.tasks"]


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(workers=1, task_modules=TASK_MODULES, role_tokens=True) as started:
        yield started


def console_settings(stack: LocalStack) -> ConsoleSettings:
    return ConsoleSettings(
        scheduler_address=stack.scheduler_address,
        coordinator_address=stack.coordinator_address,
        result_store_address=stack.result_store_address,
        # TestClient's requests name the host "testserver" (BASE_URL), not a loopback name.
        allowed_hosts="testserver",
    )


@pytest.fixture(scope="module")
def console(stack: LocalStack) -> Iterator[TestClient]:
    """The console application, its lifespan started (channels to the stack open)."""
    with TestClient(create_app(console_settings(stack)), base_url=BASE_URL) as client:
        yield client


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def sign_in(client: TestClient, stack: LocalStack, role: Role) -> str:
    """Sign ``client`` in with the stack's token of ``role``; returns the session's CSRF token."""
    client.cookies.clear()
    response = client.post("/login", data={"token": stack.token_of(role), "next": "/runs"},
                           headers=SAME_ORIGIN, follow_redirects=True)
    assert response.status_code == 200, response.text
    return csrf_of(response.text)
