"""The container health check against a real server on port 0: plaintext, and mTLS with the
service's own TLS variables (``--tls-env``)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from graflow_runtime.grpc_server import ServerHandle, create_server
from graflow_runtime.testing.certs import make_ca
from graflow_runtime.tls import TlsFiles

SCRIPT = Path(__file__).with_name("grpc_health_check.py")


async def check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(SCRIPT), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def serving(handle: ServerHandle) -> AsyncIterator[ServerHandle]:
    await handle.start()
    try:
        yield handle
    finally:
        await handle.stop(0)


@pytest.fixture
async def plaintext() -> AsyncIterator[ServerHandle]:
    async for handle in serving(create_server("127.0.0.1:0", [], name="probe")):
        yield handle


async def test_a_plaintext_server_is_healthy_without_tls_variables(plaintext: ServerHandle) -> None:
    done = await check(f"127.0.0.1:{plaintext.port}")
    assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr


async def test_an_mtls_server_is_checked_with_the_services_own_tls_variables(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    server = ca.issue("scheduler")
    files = TlsFiles(str(ca.cert), str(server.cert), str(server.key))
    server_handle = create_server(
        "127.0.0.1:0", [], name="probe", server_credentials=files.server_credentials(client_auth=True)
    )
    async for handle in serving(server_handle):
        address = f"127.0.0.1:{handle.port}"
        env = {
            "GRAFLOW_SCHEDULER_TLS_CA_FILE": str(ca.cert),
            "GRAFLOW_SCHEDULER_TLS_CERT_FILE": str(server.cert),
            "GRAFLOW_SCHEDULER_TLS_KEY_FILE": str(server.key),
        }
        done = await check("--tls-env", "GRAFLOW_SCHEDULER_", address, env=env)
        assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr
        plain = await check(address, env=env)  # without --tls-env: plaintext, refused
        assert plain.returncode == 1 and plain.stderr.startswith("unhealthy: UNAVAILABLE")
