"""The web console as a process of a :class:`~graflow.cli.devstack.LocalStack` (``console=True``,
which ``graflow dev`` sets): ``python -m graflow_console`` on a loopback port, pointed at the
stack's services, serving HTTPS with the stack's certificate when the stack has TLS.

It gets no token (it has none of its own: people sign in with theirs; with the stack's auth off,
any token signs in) and a session key fixed for the stack, so a restarted console keeps sign-ins.
"""

from __future__ import annotations

import base64
import secrets
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from graflow.cli.devstack import ServiceProcess, StackTls, child_pythonpath

PREFIX = "GRAFLOW_CONSOLE_"
MODULE = "graflow_console"


class ConsoleProcess(ServiceProcess):
    """The console child; serving once ``GET /healthz`` answers 200."""

    def __init__(self, env: Mapping[str, str], log_path: Path, port: int, tls: StackTls | None) -> None:
        super().__init__("console", MODULE, env, log_path, f"127.0.0.1:{port}")
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/"
        self._context = ssl.create_default_context(cafile=str(tls.ca_file)) if tls else None

    def wait_serving(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if not self.running:
                code = self.popen.returncode if self.popen else None
                raise self._error(f"exited with code {code} during start-up")
            try:
                health = self.url + "healthz"
                with urllib.request.urlopen(health, timeout=1.0, context=self._context) as reply:
                    if reply.status == 200:
                        return
                    last_error = f"HTTP {reply.status}"
            except (urllib.error.URLError, OSError) as exc:
                last_error = str(exc)
            time.sleep(0.1)
        raise self._error(f"did not answer {self.url}healthz within {timeout_s:.0f}s ({last_error})")


def console_env(
    addresses: Mapping[str, str], port: int, tls: StackTls | None, shutdown_grace_s: float,
    session_key: str, inherited: Mapping[str, str],
) -> dict[str, str]:
    """The console's environment: ``inherited`` (the stack's own and its extra variables), the
    stack's services, its TLS (the console never asks browsers for client certificates)."""
    env = {
        **inherited,
        "PYTHONPATH": child_pythonpath(),
        "PYTHONUNBUFFERED": "1",
        f"{PREFIX}HOST": "127.0.0.1",
        f"{PREFIX}PORT": str(port),
        f"{PREFIX}SCHEDULER_ADDRESS": addresses["scheduler"],
        f"{PREFIX}COORDINATOR_ADDRESS": addresses["coordinator"],
        f"{PREFIX}RESULT_STORE_ADDRESS": addresses["result-store"],
        f"{PREFIX}LOG_FORMAT": "json",
        f"{PREFIX}SHUTDOWN_GRACE_S": str(shutdown_grace_s),
        f"{PREFIX}SESSION_KEY": session_key,
    }
    if tls:
        env.update(tls.env(PREFIX))
        env[f"{PREFIX}TLS_CLIENT_AUTH"] = "false"
    return env


def new_session_key() -> str:
    """A Fernet key (what GRAFLOW_CONSOLE_SESSION_KEY takes): url-safe base64 of 32 random bytes."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
