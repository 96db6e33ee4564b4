"""deploy/make-secrets.sh: the certificates it makes serve mTLS between the processes, and each
service's env file holds every role's token hash and the token it sends."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc

from graflow_runtime.grpc_client import open_channel
from graflow_runtime.grpc_server import create_server
from graflow_runtime.signing import BusKeys
from graflow_runtime.tls import TlsFiles

SCRIPT = Path(__file__).with_name("make-secrets.sh")
ROLES = ("service", "worker", "client", "admin", "viewer")


def make_secrets(directory: Path) -> None:
    subprocess.run(["bash", str(SCRIPT), str(directory)], check=True, capture_output=True, timeout=120)


def env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_env_files_hold_every_roles_hash_and_the_token_each_process_sends(tmp_path: Path) -> None:
    make_secrets(tmp_path)
    tokens = {role: (tmp_path / "tokens" / role).read_text() for role in ROLES}
    assert len(set(tokens.values())) == len(ROLES) and all(len(t) == 64 for t in tokens.values())
    hashes = ",".join(f"{role}:{hashlib.sha256(tokens[role].encode()).hexdigest()}" for role in ROLES)
    bus_key = (tmp_path / "bus.key").read_text()
    key_id, _, secret = bus_key.partition(":")
    assert key_id.startswith("bus-") and len(bytes.fromhex(secret)) == 32
    assert BusKeys.from_settings([bus_key], "").enabled  # what the services accept
    for service, prefix in (("scheduler", "GRAFLOW_SCHEDULER_"), ("coordinator", "GRAFLOW_COORDINATOR_"),
                            ("result-store", "GRAFLOW_RESULT_STORE_")):
        signing = {} if service == "result-store" else {f"{prefix}SIGNING_KEYS": bus_key}
        assert env_file(tmp_path / f"{service}.env") == {
            f"{prefix}AUTH_TOKENS": hashes,
            f"{prefix}AUTH_TOKEN": tokens["service"],
            **signing,
        }
    assert env_file(tmp_path / "worker.env") == {
        "GRAFLOW_WORKER_AUTH_TOKEN": tokens["worker"],
        "GRAFLOW_WORKER_SIGNING_KEYS": bus_key,
    }
    assert env_file(tmp_path / "client.env") == {"GRAFLOW_CLIENT_AUTH_TOKEN": tokens["admin"]}


def test_a_second_run_keeps_what_exists(tmp_path: Path) -> None:
    make_secrets(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    make_secrets(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


async def test_its_certificates_serve_mtls_between_a_service_and_a_worker(tmp_path: Path) -> None:
    await asyncio.to_thread(make_secrets, tmp_path)
    ca = str(tmp_path / "ca.crt")
    server = TlsFiles(ca, str(tmp_path / "scheduler.crt"), str(tmp_path / "scheduler.key"))
    worker = TlsFiles(ca, str(tmp_path / "worker.crt"), str(tmp_path / "worker.key"))
    handle = create_server("127.0.0.1:0", [], name="probe",
                           server_credentials=server.server_credentials(client_auth=True))
    await handle.start()
    try:
        channel = open_channel(f"127.0.0.1:{handle.port}", credentials=worker.channel_credentials())
        async with channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await handle.stop(0)
