"""Credentials and roles at a real server (port 0, real channels, TLS for certificates): who is
admitted, what a refused call costs (its body is never parsed), rotation, and the audit log."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from graflow_api.v1 import coordinator_pb2, scheduler_pb2
from graflow_runtime import keys
from graflow_runtime.access import Role
from graflow_runtime.audit import AuditLog
from graflow_runtime.auth import (
    Credentials,
    Identity,
    TokenEntry,
    parse_cert_role,
    parse_token_entry,
    token_digest,
)
from graflow_runtime.errors import InvalidRequest, NotFound
from graflow_runtime.grpc_server import ServerHandle, ServicerBinding, create_server
from graflow_runtime.settings import ServiceSettings, SettingsError, load_settings
from graflow_runtime.testing.certs import make_ca

CANCEL = "/graflow_api.v1.Scheduler/CancelRun"
DISPATCH = "/graflow_api.v1.Coordinator/Dispatch"
HEARTBEATS = "/graflow_api.v1.Coordinator/HeartbeatStream"
Metadata = tuple[tuple[str, str], ...]
TOKENS = {role: f"{role.value}-token-0123456789" for role in Role}


def entries(tokens: dict[Role, str]) -> list[TokenEntry]:
    return [parse_token_entry(f"{role.value}:{token_digest(token)}") for role, token in tokens.items()]


class Calls:
    """Fake behaviours of three real methods, counting how often a body was decoded."""

    def __init__(self) -> None:
        self.decoded = 0
        self.heartbeats_read = 0

    def decoder(self, message: Any) -> Callable[[bytes], Any]:
        def decode(raw: bytes) -> Any:
            self.decoded += 1
            return message.FromString(raw)

        return decode

    async def cancel(self, request: scheduler_pb2.CancelRunRequest, _context: Any) -> scheduler_pb2.Run:
        if request.run_id == "missing":
            raise NotFound("no run 'missing'")
        return scheduler_pb2.Run(run_id=request.run_id)

    async def dispatch(self, request: Any, _context: Any) -> coordinator_pb2.DispatchResponse:
        return coordinator_pb2.DispatchResponse(accepted=len(request.deliveries))

    async def heartbeats(self, requests: AsyncIterator[Any], _context: Any) -> AsyncIterator[Any]:
        async for _request in requests:
            self.heartbeats_read += 1
            yield coordinator_pb2.HeartbeatResponse()

    def bindings(self) -> list[ServicerBinding]:
        def handlers(service: str, methods: dict[str, grpc.RpcMethodHandler]) -> ServicerBinding:
            generic = grpc.method_handlers_generic_handler(service, methods)
            return ServicerBinding(lambda h, server: server.add_generic_rpc_handlers((h,)), generic, service)

        scheduler = handlers(
            "graflow_api.v1.Scheduler",
            {
                "CancelRun": grpc.unary_unary_rpc_method_handler(
                    self.cancel,
                    request_deserializer=self.decoder(scheduler_pb2.CancelRunRequest),
                    response_serializer=scheduler_pb2.Run.SerializeToString,
                )
            },
        )
        coordinator = handlers(
            "graflow_api.v1.Coordinator",
            {
                "Dispatch": grpc.unary_unary_rpc_method_handler(
                    self.dispatch,
                    request_deserializer=self.decoder(coordinator_pb2.DispatchRequest),
                    response_serializer=coordinator_pb2.DispatchResponse.SerializeToString,
                ),
                "HeartbeatStream": grpc.stream_stream_rpc_method_handler(
                    self.heartbeats,
                    request_deserializer=self.decoder(coordinator_pb2.HeartbeatRequest),
                    response_serializer=coordinator_pb2.HeartbeatResponse.SerializeToString,
                ),
            },
        )
        return [scheduler, coordinator]


async def serve(calls: Calls, credentials: Credentials | None, **kwargs: Any) -> ServerHandle:
    handle = create_server("127.0.0.1:0", calls.bindings(), name="probe", credentials=credentials, **kwargs)
    await handle.start()
    return handle


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


async def call(port: int, method: str, body: bytes, metadata: Metadata = ()) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            await channel.unary_unary(method)(body, metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


CANCEL_BODY = scheduler_pb2.CancelRunRequest(run_id="r1").SerializeToString()


@pytest.fixture
async def guarded() -> AsyncIterator[tuple[Calls, int]]:
    calls = Calls()
    handle = await serve(calls, Credentials(entries(TOKENS)))
    try:
        yield calls, handle.port
    finally:
        await handle.stop(None)


@pytest.mark.parametrize("metadata", [(), bearer("wrong"), (("authorization", "Basic abc"),)])
async def test_garbage_without_a_valid_credential_is_unauthenticated_and_never_parsed(
    guarded: tuple[Calls, int], metadata: Metadata
) -> None:
    calls, port = guarded
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary(CANCEL)(b"\xff\xfe garbage \x00", metadata=metadata, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer <token>" in (caught.value.details() or "")
    assert calls.decoded == 0


async def test_a_streamed_request_without_credentials_is_refused_before_anything_is_read(
    guarded: tuple[Calls, int],
) -> None:
    calls, port = guarded
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = channel.stream_stream(HEARTBEATS)(timeout=10)
        # The server may end the call before this write: the status below is what it answered.
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await stream.write(b"\xff garbage")
        assert await stream.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (calls.decoded, calls.heartbeats_read) == (0, 0)


async def test_a_streamed_request_of_an_allowed_role_is_decoded_and_served(
    guarded: tuple[Calls, int],
) -> None:
    calls, port = guarded
    body = coordinator_pb2.HeartbeatRequest(worker_id="w1").SerializeToString()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = channel.stream_stream(HEARTBEATS)(iter([body, body]), metadata=bearer(TOKENS[Role.WORKER]))
        answers = [answer async for answer in stream]
    assert (len(answers), calls.heartbeats_read, calls.decoded) == (2, 2, 2)


async def test_a_known_role_that_is_not_allowed_is_permission_denied_naming_role_and_method(
    guarded: tuple[Calls, int],
) -> None:
    calls, port = guarded
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            client = bearer(TOKENS[Role.CLIENT])
            await channel.unary_unary(DISPATCH)(b"\xff garbage", metadata=client, timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == f"role client may not call {DISPATCH}; it is for: admin, service"
    assert calls.decoded == 0


async def test_an_allowed_role_gets_its_answer_and_a_bad_body_is_invalid_argument(
    guarded: tuple[Calls, int],
) -> None:
    _calls, port = guarded
    token = bearer(TOKENS[Role.CLIENT])
    assert await call(port, CANCEL, CANCEL_BODY, token) == grpc.StatusCode.OK
    assert await call(port, CANCEL, b"\xff\xff\xff", token) == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_stays_open_and_reflection_needs_a_credential_of_any_role(
    guarded: tuple[Calls, int],
) -> None:
    _calls, port = guarded
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            _ = [r async for r in reflection.ServerReflectionInfo(iter([request]), timeout=10)]
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answers = [
            r
            async for r in reflection.ServerReflectionInfo(
                iter([request]), metadata=bearer(TOKENS[Role.VIEWER]), timeout=10
            )
        ]
    names = {service.name for service in answers[0].list_services_response.service}
    assert "graflow_api.v1.Scheduler" in names


async def test_two_tokens_of_a_role_are_valid_at_once_then_only_the_new_one_after_a_restart() -> None:
    old, new = "client-token-old-aaaaaaaa", "client-token-new-bbbbbbbb"
    calls = Calls()
    both = await serve(calls, Credentials(entries({Role.CLIENT: old}) + entries({Role.CLIENT: new})))
    try:
        assert await call(both.port, CANCEL, CANCEL_BODY, bearer(old)) == grpc.StatusCode.OK
        assert await call(both.port, CANCEL, CANCEL_BODY, bearer(new)) == grpc.StatusCode.OK
    finally:
        await both.stop(None)
    only_new = await serve(calls, Credentials(entries({Role.CLIENT: new})))
    try:
        assert await call(only_new.port, CANCEL, CANCEL_BODY, bearer(old)) == grpc.StatusCode.UNAUTHENTICATED
        assert await call(only_new.port, CANCEL, CANCEL_BODY, bearer(new)) == grpc.StatusCode.OK
    finally:
        await only_new.stop(None)


@pytest.mark.parametrize("position", [0, 2, 4, None])
def test_a_token_is_compared_in_constant_time_with_every_entry_whatever_matches(
    monkeypatch: pytest.MonkeyPatch, position: int | None
) -> None:
    tokens = [f"token-number-{i}" for i in range(5)]
    credentials = Credentials([parse_token_entry(f"client:{token_digest(t)}") for t in tokens])
    compared: list[tuple[int, int]] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return compare(a, b)

    monkeypatch.setattr("graflow_runtime.auth.hmac.compare_digest", counting)
    presented = tokens[position] if position is not None else "a much longer token that matches nothing"
    identity = credentials.identify(bearer(presented), {})
    # Every configured hash is compared, with hashes of one length, whichever (if any) matches.
    assert compared == [(32, 32)] * 5
    matched = Identity(Role.CLIENT, f"token:{token_digest(presented)[:12]}")
    assert identity == (matched if position is not None else None)


def test_a_legacy_shared_token_is_admin_only_while_no_roles_are_configured() -> None:
    legacy = Credentials.from_settings([], [], "shared")
    assert legacy is not None
    admin = Identity(Role.ADMIN, f"token:{token_digest('shared')[:12]}")
    assert legacy.identify(bearer("shared"), {}) == admin
    with_roles = Credentials.from_settings([f"client:{token_digest('c')}"], [], "shared")
    assert with_roles is not None
    assert with_roles.identify(bearer("shared"), {}) is None
    assert Credentials.from_settings([], [], "") is None


def test_settings_read_token_and_certificate_entries_and_refuse_bad_ones_without_echoing_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    digest = token_digest("t")
    monkeypatch.setenv("GRAFLOW_TEST_AUTH_TOKENS", f"worker:{digest}, admin:{digest.upper()}")
    monkeypatch.setenv("GRAFLOW_TEST_AUTH_CERT_ROLES", '["CN=a,O=b=client", "worker-1=worker"]')

    class TestSettings(ServiceSettings):
        model_config = {**ServiceSettings.model_config, "env_prefix": "GRAFLOW_TEST_"}

    settings = load_settings(TestSettings)
    assert settings.auth_tokens == [f"worker:{digest}", f"admin:{digest.upper()}"]
    assert parse_cert_role(settings.auth_cert_roles[0]) == ("CN=a,O=b", Role.CLIENT)
    monkeypatch.setenv("GRAFLOW_TEST_AUTH_TOKENS", "client:my-secret-token")
    with pytest.raises(SettingsError, match="GRAFLOW_TEST_AUTH_TOKENS: .*<role>:<sha256 hex") as caught:
        load_settings(TestSettings)
    assert "my-secret-token" not in str(caught.value)
    monkeypatch.setenv("GRAFLOW_TEST_AUTH_TOKENS", f"root:{digest}")
    roles = "client, worker, service, admin, viewer"
    with pytest.raises(SettingsError, match=f"names the role 'root'; roles are {roles}"):
        load_settings(TestSettings)


async def test_a_client_certificate_s_common_name_maps_to_its_role(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    server_files = ca.issue("server")
    mapped, unmapped = ca.issue("scheduler-1"), ca.issue("somebody")
    server_credentials = grpc.ssl_server_credentials(
        [(server_files.key.read_bytes(), server_files.cert.read_bytes())],
        root_certificates=ca.cert.read_bytes(),
        require_client_auth=True,
    )
    credentials = Credentials(
        entries({Role.CLIENT: TOKENS[Role.CLIENT]}), dict([parse_cert_role("scheduler-1=service")])
    )
    handle = await serve(Calls(), credentials, server_credentials=server_credentials)

    async def call_as(files: Any, method: str, body: bytes, metadata: Metadata = ()) -> grpc.StatusCode | str:
        channel_credentials = grpc.ssl_channel_credentials(
            ca.cert.read_bytes(), files.key.read_bytes(), files.cert.read_bytes()
        )
        async with grpc.aio.secure_channel(f"localhost:{handle.port}", channel_credentials) as channel:
            try:
                await channel.unary_unary(method)(body, metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError as exc:
                return f"{exc.code().name}: {exc.details()}"
        return grpc.StatusCode.OK

    try:
        assert await call_as(mapped, DISPATCH, b"") == grpc.StatusCode.OK
        assert await call_as(mapped, CANCEL, CANCEL_BODY) == (
            f"PERMISSION_DENIED: role service may not call {CANCEL}; it is for: admin, client"
        )
        assert str(await call_as(unmapped, DISPATCH, b"")).startswith("UNAUTHENTICATED")
        # A presented token decides alone: a wrong one is refused over a good certificate, a valid
        # one's role is the caller's.
        assert str(await call_as(mapped, DISPATCH, b"", bearer("wrong"))).startswith("UNAUTHENTICATED")
        assert await call_as(mapped, CANCEL, CANCEL_BODY, bearer(TOKENS[Role.CLIENT])) == grpc.StatusCode.OK
    finally:
        await handle.stop(None)


async def test_mutating_calls_are_audited_with_who_what_and_where_never_the_token(
    redis: aioredis.Redis,
) -> None:
    await redis.delete(keys.AUDIT_STREAM)
    audit = AuditLog(redis, service="probe", maxlen=1000)
    handle = await serve(Calls(), Credentials(entries(TOKENS)), audit=audit)
    try:
        assert await call(handle.port, CANCEL, CANCEL_BODY, bearer(TOKENS[Role.CLIENT])) == grpc.StatusCode.OK
        denied = await call(handle.port, CANCEL, b"\xff", bearer(TOKENS[Role.WORKER]))
        assert denied == grpc.StatusCode.PERMISSION_DENIED
        assert await call(handle.port, DISPATCH, b"", bearer(TOKENS[Role.SERVICE])) == grpc.StatusCode.OK
        assert await call(handle.port, CANCEL, CANCEL_BODY) == grpc.StatusCode.UNAUTHENTICATED
        missing = scheduler_pb2.CancelRunRequest(run_id="missing").SerializeToString()
        admin = bearer(TOKENS[Role.ADMIN])
        assert await call(handle.port, CANCEL, missing, admin) == grpc.StatusCode.NOT_FOUND
    finally:
        await handle.stop(None)
    events = await audit.list()
    raw = await redis.xrange(keys.AUDIT_STREAM)
    written = b" ".join(value for _id, fields in raw for value in fields.values())
    assert not any(token.encode() in written for token in TOKENS.values())
    summary = [
        (e.service, e.method, e.role, e.principal, e.outcome, json.loads(e.details_json)) for e in events
    ]
    worker = f"token:{token_digest(TOKENS[Role.WORKER])[:12]}"
    client = f"token:{token_digest(TOKENS[Role.CLIENT])[:12]}"
    admin = f"token:{token_digest(TOKENS[Role.ADMIN])[:12]}"
    assert summary == [  # newest first; Dispatch is not a mutating action people take: not audited
        ("probe", CANCEL, "admin", admin, "NOT_FOUND", {"run_id": "missing", "reason": ""}),
        ("probe", CANCEL, "worker", worker, "PERMISSION_DENIED", {}),
        ("probe", CANCEL, "client", client, "OK", {"run_id": "r1", "reason": ""}),
    ]
    assert all(e.peer.startswith("ipv4:127.0.0.1:") and e.at_ms > 0 for e in events)
    assert [e.id for e in await audit.list(limit=1, before_id=events[0].id)] == [events[1].id]
    with pytest.raises(InvalidRequest, match=re.escape("before_id: '1-0\\n' is not an audit event id")):
        await audit.list(before_id="1-0\n")
    with pytest.raises(InvalidRequest, match="limit: 1001 is over the maximum of 1000"):
        await audit.list(limit=1001)


async def test_without_credentials_mutating_calls_are_still_audited_as_anonymous(
    redis: aioredis.Redis,
) -> None:
    await redis.delete(keys.AUDIT_STREAM)
    audit = AuditLog(redis, service="probe", maxlen=1000)
    handle = await serve(Calls(), None, audit=audit)
    try:
        assert await call(handle.port, CANCEL, CANCEL_BODY) == grpc.StatusCode.OK
    finally:
        await handle.stop(None)
    [event] = await audit.list()
    assert (event.role, event.principal, event.outcome) == ("", "anonymous", "OK")


async def test_the_audit_stream_is_capped(redis: aioredis.Redis) -> None:
    await redis.delete(keys.AUDIT_STREAM)
    audit = AuditLog(redis, service="probe", maxlen=100)
    for i in range(1000):
        await audit.record(
            method=CANCEL, role="admin", principal="p", peer="x", outcome="OK", details={"i": i}
        )
    # MAXLEN ~ trims whole macro nodes (100 entries each by default): about the cap, far below 1000.
    assert await redis.xlen(keys.AUDIT_STREAM) < 300
