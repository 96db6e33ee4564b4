"""pytest fixtures: a real Redis for every test session that needs one.

``redis_url`` is, in order of preference: ``GRAFLOW_TEST_REDIS_URL`` if set (point the suite at an
existing server), a testcontainers Redis when a Docker engine is reachable, or a private
``redis-server`` process on a free port in a temp dir (these machines have no Docker engine).
``redis`` gives each test an asyncio client on a flushed database.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from graflow_runtime.local_redis import LocalRedis


def _docker_engine_reachable() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no engine here"
        return False


@pytest.fixture(scope="session")
def local_redis() -> Iterator[LocalRedis]:
    """A private redis-server process (for tests that stop or restart Redis). It fsyncs every write
    so that a test killing it with SIGKILL loses nothing that Redis acknowledged."""
    server = LocalRedis(fsync="always").start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    explicit = os.environ.get("GRAFLOW_TEST_REDIS_URL")
    if explicit:
        yield explicit
        return
    if _docker_engine_reachable():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7") as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(6379)
            yield f"redis://{host}:{port}/0"
        return
    yield request.getfixturevalue("local_redis").url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()
