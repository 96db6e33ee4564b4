from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from structlog.testing import capture_logs

from graflow_api.v1 import coordinator_pb2
from graflow_runtime import keys
from graflow_runtime.local_redis import LocalRedis, free_port
from graflow_runtime.redis_client import connect
from graflow_runtime.version import __version__

from graflow_coordinator import __main__ as entry_point
from graflow_coordinator.app import CoordinatorApp
from graflow_coordinator.conftest import StartCoordinator, delivery, eventually
from graflow_coordinator.service import SERVICE_NAME


async def health_status(port: int, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service)
        )
        return reply.status


async def test_a_started_coordinator_is_serving_with_health_and_reflection(
    coordinator: CoordinatorApp,
) -> None:
    assert await health_status(coordinator.port) == health_pb2.HealthCheckResponse.SERVING
    assert await health_status(coordinator.port, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
    async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        services = [s.name async for reply in stream for s in reply.list_services_response.service]
    assert SERVICE_NAME in services


async def test_a_coordinator_with_an_auth_token_rejects_calls_without_it(
    start_coordinator: StartCoordinator, open_stub
) -> None:
    stub = open_stub(await start_coordinator(auth_token="s3cret"))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListWorkers(coordinator_pb2.ListWorkersRequest())

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_the_coordinator_carries_on_through_a_redis_outage(
    start_coordinator: StartCoordinator, open_stub, local_redis: LocalRedis
) -> None:
    client = connect(local_redis.url)
    await client.flushdb()
    stub = open_stub(await start_coordinator(redis_url=local_redis.url, retry_timer_max_sleep_ms=50))
    await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("later", delay_ms=1000)]))

    with capture_logs() as logs:
        await asyncio.to_thread(local_redis.stop, kill=True)
        try:

            async def loops_backing_off() -> bool:
                return any(e["event"] == "redis unavailable; backing off" for e in logs)

            await eventually(loops_backing_off, timeout_s=20, what="the loops to notice the outage")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("now")]))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "retry with backoff" in caught.value.details()
        finally:
            await asyncio.to_thread(local_redis.start)

    async def dispatched() -> bool:
        try:
            reply = await stub.Dispatch(coordinator_pb2.DispatchRequest(deliveries=[delivery("now")]))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            return False
        return reply.accepted == 1

    async def both_on_queue() -> bool:
        return await client.xlen(keys.queue_stream("default")) == 2

    await eventually(dispatched, timeout_s=20, what="Dispatch to work again after the restart")
    await eventually(both_on_queue, timeout_s=20, what="the retry timer to release the delayed delivery")
    await client.aclose()


async def test_the_process_serves_until_sigterm_then_exits_cleanly(
    redis_url: str, redis: aioredis.Redis
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "GRAFLOW_COORDINATOR_REDIS_URL": redis_url,
        "GRAFLOW_COORDINATOR_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "GRAFLOW_COORDINATOR_LOG_FORMAT": "json",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", entry_point.__package__],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:

        async def serving() -> bool:
            try:
                return await health_status(port) == health_pb2.HealthCheckResponse.SERVING
            except grpc.aio.AioRpcError:
                assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
                return False

        await eventually(serving, timeout_s=20, what="the coordinator process to serve")
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(process.communicate, timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 0, stderr.decode()
    assert b'"event": "coordinator listening"' in stderr
    assert f'"version": "{__version__}"'.encode() in stderr
    assert f'"port": {port}'.encode() in stderr
    assert b"coordinator stopped" in stderr
