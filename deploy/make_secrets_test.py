"""deploy/make-secrets.sh: the certificates it makes serve mTLS between the processes, and each
service's env file holds every role's token hash and the token it sends."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.exceptions import NoPermissionError

from graflow_runtime import keys, redis_acl
from graflow_runtime.grpc_client import open_channel
from graflow_runtime.grpc_server import create_server
from graflow_runtime.local_redis import LocalRedis, RedisTls
from graflow_runtime.redis_client import connect
from graflow_runtime.signing import BusKeys
from graflow_runtime.tls import TlsFiles

from graflow_console.settings import ConsoleSettings

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
    passwords = redis_acl.read_passwords(tmp_path / "redis-users")
    assert all(len(p) == 64 for p in passwords.values()) and len(set(passwords.values())) == len(passwords)

    def redis_url(user: str) -> str:
        return f"rediss://{user}:{passwords[user]}@redis:6379/0?ssl_ca_certs=/run/secrets/ca.crt"

    for service, prefix in (("scheduler", "GRAFLOW_SCHEDULER_"), ("coordinator", "GRAFLOW_COORDINATOR_"),
                            ("result-store", "GRAFLOW_RESULT_STORE_")):
        signing = {} if service == "result-store" else {f"{prefix}SIGNING_KEYS": bus_key}
        assert env_file(tmp_path / f"{service}.env") == {
            f"{prefix}AUTH_TOKENS": hashes,
            f"{prefix}AUTH_TOKEN": tokens["service"],
            **signing,
            f"{prefix}REDIS_URL": redis_url(service),
        }
    assert env_file(tmp_path / "worker.env") == {
        "GRAFLOW_WORKER_AUTH_TOKEN": tokens["worker"],
        "GRAFLOW_WORKER_SIGNING_KEYS": bus_key,
        "GRAFLOW_WORKER_REDIS_URL": redis_url("worker"),
    }
    assert env_file(tmp_path / "client.env") == {"GRAFLOW_CLIENT_AUTH_TOKEN": tokens["admin"]}
    console = env_file(tmp_path / "console.env")
    assert list(console) == ["GRAFLOW_CONSOLE_SESSION_KEY"]  # and no token: people sign in with theirs
    assert ConsoleSettings(session_key=console["GRAFLOW_CONSOLE_SESSION_KEY"]).session_key  # a Fernet key


def test_a_second_run_keeps_what_exists(tmp_path: Path) -> None:
    make_secrets(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    make_secrets(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


async def test_its_redis_certificate_passwords_and_urls_close_redis(tmp_path: Path) -> None:
    """A redis-server with make-secrets.sh's certificate and users (TLS only): the worker's URL of
    worker.env (pointed at this server and this CA) gets in as the worker, and is refused run state."""
    secrets_dir = tmp_path / "secrets"
    await asyncio.to_thread(make_secrets, secrets_dir)
    tls = RedisTls(ca=secrets_dir / "ca.crt", cert=secrets_dir / "redis.crt", key=secrets_dir / "redis.key")
    users = redis_acl.read_passwords(secrets_dir / "redis-users")
    (tmp_path / "redis").mkdir()
    with LocalRedis(tmp_path / "redis", tls=tls, users=users) as server:
        url = env_file(secrets_dir / "worker.env")["GRAFLOW_WORKER_REDIS_URL"]
        url = url.replace("@redis:6379/", f"@127.0.0.1:{server.port}/")
        url = url.replace("/run/secrets/", f"{secrets_dir}/")
        worker = connect(url)
        try:
            assert await worker.xadd(keys.OUTCOMES_STREAM, {keys.OUTCOME_FIELD: b"o"})
            with pytest.raises(NoPermissionError):
                await worker.hset(keys.run_meta("01JABCDEFGHJKMNPQRSTVWXYZ0"), "status", "forged")
        finally:
            await worker.aclose()


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
