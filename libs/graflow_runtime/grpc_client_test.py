"""Downstream: only infrastructure failures count against the circuit breaker; channels balance over
replicas and retry idempotent calls.

Uses a real in-process grpc.aio server (port 0) built by ``create_server``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from graflow_runtime import metrics
from graflow_runtime.grpc_client import Downstream, DownstreamUnavailable, open_channel
from graflow_runtime.grpc_options import IDEMPOTENT_METHODS, MAX_MESSAGE_BYTES
from graflow_runtime.grpc_server import ServicerBinding, create_server
from graflow_runtime.local_redis import free_port
from graflow_runtime.testing.certs import make_ca

METHOD = "/graflow.test.Probe/Call"
RESULT_STORE = "graflow_api.v1.ResultStore"


async def _reject(_request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad request")


def _add_probe(_servicer: object, server: grpc.aio.Server) -> None:
    handler = grpc.method_handlers_generic_handler(
        "graflow.test.Probe", {"Call": grpc.unary_unary_rpc_method_handler(_reject)}
    )
    server.add_generic_rpc_handlers((handler,))


def _downstream() -> Downstream:
    return Downstream("probe", timeout_s=2.0, fail_max=2, reset_s=60.0)


def sample(name: str, **labels: str) -> float:
    """A sample of this process' metrics registry (0 when it has none yet)."""
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_business_errors_pass_through_and_never_open_the_breaker() -> None:
    handle = create_server("127.0.0.1:0", [ServicerBinding(_add_probe, None, "graflow.test.Probe")])
    await handle.server.start()
    await handle.set_serving(True)
    channel = open_channel(f"127.0.0.1:{handle.port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="graflow.test.Probe"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        downstream = _downstream()
        call = channel.unary_unary(METHOD)
        counted = {"method": METHOD, "code": "INVALID_ARGUMENT"}
        server_before = sample("graflow_grpc_server_handled_seconds_count", **counted)
        client_before = sample("graflow_grpc_client_handled_seconds_count", **counted)
        for _ in range(5):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await downstream.call(call, b"")
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert not downstream.is_open
        # Both ends timed the 5 calls under their method and code (the server's interceptor and
        # the channel's).
        assert sample("graflow_grpc_client_handled_seconds_count", **counted) == client_before + 5
        for _ in range(50):  # the server records a call once its handler returned
            if sample("graflow_grpc_server_handled_seconds_count", **counted) == server_before + 5:
                break
            await asyncio.sleep(0.01)
        assert sample("graflow_grpc_server_handled_seconds_count", **counted) == server_before + 5
        assert sample("graflow_breaker_state", downstream="probe") == 0
    finally:
        await channel.close()
        await handle.stop(0)


async def test_a_message_over_the_limit_is_resource_exhausted_for_that_call_only() -> None:
    """RESOURCE_EXHAUSTED answers one request (here: over the 64 MiB message limit): the caller gets
    it, the breaker stays closed and the next call goes through (issue 14)."""
    handle = create_server("127.0.0.1:0", [ServicerBinding(_add_probe, None, "graflow.test.Probe")])
    await handle.server.start()
    channel = open_channel(f"127.0.0.1:{handle.port}")
    try:
        downstream = _downstream()
        call = channel.unary_unary(METHOD)
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await downstream.call(call, b"x" * (MAX_MESSAGE_BYTES + 1))
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert not downstream.is_open
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await downstream.call(call, b"")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await channel.close()
        await handle.stop(0)


async def test_unavailable_opens_the_breaker_then_fails_fast() -> None:
    channel = open_channel(f"127.0.0.1:{free_port()}")  # nothing listens there
    try:
        downstream = _downstream()
        call = channel.unary_unary(METHOD)
        trips = sample("graflow_breaker_trips_total", downstream="probe")
        for _ in range(2):
            with pytest.raises(DownstreamUnavailable):
                await downstream.call(call, b"")
        assert downstream.is_open
        assert sample("graflow_breaker_trips_total", downstream="probe") == trips + 1
        assert sample("graflow_breaker_state", downstream="probe") == 2  # open
        with pytest.raises(DownstreamUnavailable, match="circuit breaker open"):
            await downstream.call(call, b"")
    finally:
        await channel.close()


def _add_named(name: str) -> Callable[[object, grpc.aio.Server], None]:
    """A probe whose answer is ``name`` (which replica served the call)."""

    async def answer(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return name.encode()

    def add(_servicer: object, server: grpc.aio.Server) -> None:
        handler = grpc.method_handlers_generic_handler(
            "graflow.test.Probe", {"Name": grpc.unary_unary_rpc_method_handler(answer)}
        )
        server.add_generic_rpc_handlers((handler,))

    return add


async def test_calls_to_a_list_of_replicas_go_to_each_and_avoid_one_draining_or_stopped() -> None:
    handles = [
        create_server("127.0.0.1:0", [ServicerBinding(_add_named(name), None, "graflow.test.Probe")])
        for name in ("a", "b")
    ]
    for handle in handles:
        await handle.start()
    channel = open_channel(",".join(f"127.0.0.1:{handle.port}" for handle in handles))
    try:
        downstream, call = _downstream(), channel.unary_unary("/graflow.test.Probe/Name")
        served = Counter([await downstream.call(call, b"") for _ in range(40)])
        assert set(served) == {b"a", b"b"} and min(served.values()) >= 10, served
        # A replica that reports NOT_SERVING (it got SIGTERM and drains) gets no new calls.
        await handles[0].set_serving(False)
        await asyncio.sleep(0.5)  # the health service pushes the change on its Watch stream
        served = Counter([await downstream.call(call, b"") for _ in range(20)])
        assert served == {b"b": 20}
        await handles[0].set_serving(True)
        await asyncio.sleep(0.5)
        served = Counter([await downstream.call(call, b"") for _ in range(20)])
        assert set(served) == {b"a", b"b"}, served
        await handles[0].stop(0)
        served = Counter([await downstream.call(call, b"") for _ in range(20)])
        assert served == {b"b": 20}
        assert not downstream.is_open
    finally:
        await channel.close()
        for handle in handles:
            await handle.stop(0)


def _add_unavailable_once(attempts: Counter[str]) -> Callable[[object, grpc.aio.Server], None]:
    """ResultStore methods that answer UNAVAILABLE to their first call, then OK."""

    def method(name: str) -> grpc.RpcMethodHandler:
        async def answer(_request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            attempts[name] += 1
            if attempts[name] == 1:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "replica going away")
            return b""

        return grpc.unary_unary_rpc_method_handler(answer)

    def add(_servicer: object, server: grpc.aio.Server) -> None:
        methods = {name: method(name) for name in ("GetResults", "ChannelUpdate")}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(RESULT_STORE, methods),))

    return add


async def test_idempotent_calls_are_retried_on_unavailable_and_the_others_are_not() -> None:
    attempts: Counter[str] = Counter()
    binding = ServicerBinding(_add_unavailable_once(attempts), None, RESULT_STORE)
    handle = create_server("127.0.0.1:0", [binding])
    await handle.start()
    channel = open_channel(f"127.0.0.1:{handle.port}")
    try:
        downstream = _downstream()
        assert "GetResults" in IDEMPOTENT_METHODS[RESULT_STORE]
        assert await downstream.call(channel.unary_unary(f"/{RESULT_STORE}/GetResults"), b"") == b""
        assert attempts["GetResults"] == 2
        assert "ChannelUpdate" not in IDEMPOTENT_METHODS[RESULT_STORE]
        with pytest.raises(DownstreamUnavailable, match="replica going away"):
            await downstream.call(channel.unary_unary(f"/{RESULT_STORE}/ChannelUpdate"), b"")
        assert attempts["ChannelUpdate"] == 1
    finally:
        await channel.close()
        await handle.stop(0)


async def test_tls_replicas_of_a_list_are_checked_against_its_first_name(tmp_path: Path) -> None:
    """The names of a list are resolved to addresses, but TLS checks each replica's certificate
    against the first entry's name (``localhost`` here, which the certificates hold)."""
    ca = make_ca(tmp_path)
    files = ca.issue("replica")
    server_credentials = grpc.ssl_server_credentials([(files.key.read_bytes(), files.cert.read_bytes())])
    handles = [
        create_server(
            "127.0.0.1:0",
            [ServicerBinding(_add_named(name), None, "graflow.test.Probe")],
            server_credentials=server_credentials,
        )
        for name in ("a", "b")
    ]
    for handle in handles:
        await handle.start()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert.read_bytes())
    address = ",".join(f"localhost:{handle.port}" for handle in handles)
    channel = open_channel(address, credentials=credentials)
    try:
        call = channel.unary_unary("/graflow.test.Probe/Name")
        served = Counter([await _downstream().call(call, b"") for _ in range(20)])
        assert set(served) == {b"a", b"b"}, served
    finally:
        await channel.close()
        for handle in handles:
            await handle.stop(0)


def test_the_consoles_reads_are_retried_and_its_writes_are_not() -> None:
    scheduler = IDEMPOTENT_METHODS["graflow_api.v1.Scheduler"]
    coordinator = IDEMPOTENT_METHODS["graflow_api.v1.Coordinator"]
    assert {"CountRuns", "GetWorkflow", "ListWorkflows"} <= set(scheduler)
    assert "ListQueues" in coordinator
    assert not {"PutWorkflow", "DeleteWorkflow"} & set(scheduler)
    assert "DeleteDeadLetters" not in coordinator
