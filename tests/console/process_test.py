"""The console as a process of a local stack (``LocalStack(console=True)``, what ``graflow dev``
starts): served by uvicorn, signed in over real HTTP, stopped cleanly."""

from __future__ import annotations

from pathlib import Path

import httpx

from graflow.devstack import LocalStack
from graflow_runtime.access import Role


def test_the_stacks_console_serves_sign_in_and_the_run_list_and_stops_cleanly():
    stack = LocalStack(workers=0, role_tokens=True, console=True)
    with stack:
        url = stack.console_url
        assert url == f"http://127.0.0.1:{stack.console_port}/"
        with httpx.Client(base_url=url, timeout=10) as browser:
            assert browser.get("/healthz").json() == {"status": "ok"}
            assert browser.get("/runs").status_code == 303  # to /login
            signed_in = browser.post("/login", data={"token": stack.token_of(Role.VIEWER)},
                                     headers={"origin": url.rstrip("/")}, follow_redirects=True)
            assert signed_in.status_code == 200 and 'id="runs"' in signed_in.text
        console = stack.process("console")
        # Feedback webhooks link to this console, on whichever port it got.
        scheduler_pid = stack.process("scheduler").pid
        environ = Path(f"/proc/{scheduler_pid}/environ").read_bytes().split(b"\0")
        assert f"GRAFLOW_SCHEDULER_CONSOLE_URL={url}".encode() in environ
    assert console.popen is not None and console.popen.returncode == 0, stack.log_tail("console")
