"""The console in a real browser: one stack per module (redis-server, the four services, two
workers running tests/e2e/tasks.py, and the console as processes, one token per role) and one
headless Chromium (tests/browser/browser.py) shared by the module's tests, each of which signs in
afresh. Every test leaves a screenshot of where it ended in ``extra-output/screenshots/`` (named
after the test, ``-FAILED`` when it failed)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from graflow import Client
from graflow.devstack import LocalStack
from tests.browser.browser import Browser
from tests.e2e.conftest import effects_url, module_stack

FAILED_KEY = pytest.StashKey[bool]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Remember on the test item whether its setup or body failed (for its screenshot's name)."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        item.stash[FAILED_KEY] = True


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    with module_stack(request, workers=2, role_tokens=True, console=True) as stack:
        yield stack


@pytest.fixture(scope="module")
def chromium(stack: LocalStack) -> Iterator[Browser]:
    browser = Browser(stack.console_url)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def browser(request: pytest.FixtureRequest, chromium: Browser) -> Iterator[Browser]:
    """The module's Chromium, signed out; its screenshot is taken when the test ends."""
    chromium.driver.delete_all_cookies()
    yield chromium
    failed = request.node.stash.get(FAILED_KEY, False)
    chromium.screenshot(f"{request.node.name}{'-FAILED' if failed else ''}")


@pytest.fixture(scope="module")
def client(stack: LocalStack) -> Iterator[Client]:
    """The SDK with the stack's ``client`` token (what an application holds)."""
    with stack.client(timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def fx(stack: LocalStack) -> Iterator[redis.Redis]:
    """The Redis where tests/e2e/tasks.py record their effects and wait for their gates."""
    conn = redis.Redis.from_url(effects_url(stack))
    yield conn
    conn.close()
