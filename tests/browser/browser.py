"""Headless Chromium, driven by Selenium, on the console's pages.

The browser and its driver are Debian's (``chromium``, ``chromium-driver``; build-support/ci.sh
installs them): the driver's path is given to Selenium explicitly and the browser's location set,
so Selenium Manager never runs and nothing is downloaded (these machines reach only the package
registries). The flags keep Chromium from reaching the network on its own (updates, sync, field
trials) and from needing a sandbox, a GPU or a large /dev/shm, none of which a CI container has.

Screenshots go to ``extra-output/`` under the test's working directory: Pants' sandbox, whose
``extra-output/`` it copies to ``dist/test/<test target>/`` after the run (docs/testing.md).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
WINDOW = (1400, 1000)
SCREENSHOTS = Path("extra-output") / "screenshots"
WAIT_S = 30.0

T = TypeVar("T")


class BrowserMissingError(RuntimeError):
    """Chromium or its driver is not installed."""


def driver_path() -> str:
    return shutil.which("chromedriver") or "/usr/bin/chromedriver"


def start_chromium(profile_dir: Path) -> WebDriver:
    """A headless Chromium with a fresh profile in ``profile_dir``."""
    missing = [path for path in (CHROMIUM, driver_path()) if not Path(path).is_file()]
    if missing:
        raise BrowserMissingError(
            f"{', '.join(missing)} not found: the browser tests need Debian's Chromium and its driver "
            "(apt-get install -y chromium chromium-driver; build-support/ci.sh installs them)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile_dir}", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver_path()), options=options)


class Browser:
    """One Chromium on the console at ``base_url``: sign in, open pages, wait for what a page
    shows (bounded waits that name what they waited for), and screenshots."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._profile = Path(tempfile.mkdtemp(prefix="graflow-chromium-"))
        self.driver = start_chromium(self._profile)

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)

    # ---- navigation ----
    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    @property
    def path(self) -> str:
        """The current page's path (and query), without the console's base URL."""
        return self.driver.current_url.removeprefix(self.base_url)

    def sign_in(self, token: str) -> None:
        """A fresh session (no cookie of an earlier test) signed in with ``token``."""
        self.driver.delete_all_cookies()
        self.open("/login")
        self.find("#token").send_keys(token)
        self.click("#login-submit")
        self.wait(lambda: not self.path.startswith("/login"), "the sign-in to leave /login")

    # ---- reading the page ----
    def find(self, css: str) -> WebElement:
        """The element matching ``css``, waiting for it to appear."""
        return self.wait(lambda: self._first(css), f"an element {css!r}")

    def click(self, css: str) -> None:
        """Click the element matching ``css``. The console's pages replace parts of themselves
        live (server-sent events, htmx), so an element found may be gone by the click: found
        again until the click lands."""

        def attempt() -> bool:
            element = self._first(css)
            if element is None:
                return False
            try:
                element.click()
            except StaleElementReferenceException:
                return False
            return True

        self.wait(attempt, f"a click on {css!r}")

    def script(self, source: str, *args: object) -> Any:
        """``source`` run in the page (reads of live parts in one step, never a stale element)."""
        return self.driver.execute_script(source, *args)

    def text(self, css: str) -> str:
        """The visible text of the first element matching ``css`` ("" when there is none)."""
        return self.script(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css
        )

    def all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def exists(self, css: str) -> bool:
        return bool(self.all(css))

    def _first(self, css: str) -> WebElement | None:
        try:
            return self.driver.find_element(By.CSS_SELECTOR, css)
        except NoSuchElementException:
            return None

    def wait(self, condition: Callable[[], T], what: str, timeout_s: float = WAIT_S) -> T:
        """``condition()``'s first truthy value, polled; fails naming ``what`` and the page."""
        try:
            return WebDriverWait(self.driver, timeout_s, poll_frequency=0.1).until(lambda _d: condition())
        except TimeoutException:
            raise AssertionError(
                f"timed out after {timeout_s:.0f}s waiting for {what} on {self.path}; "
                f"flash: {self.flash()!r}"
            ) from None

    def flash(self) -> str:
        """The text of the page's message (#flash), "" when it has none."""
        return self.text("#flash")

    # ---- screenshots ----
    def screenshot(self, name: str) -> Path:
        """Save the whole window as ``extra-output/screenshots/<name>.png``."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
        if not self.driver.save_screenshot(str(path)):
            raise AssertionError(f"Chromium could not write the screenshot {path}")
        return path
