"""pytest fixtures: a real Redis for every test session that needs one.

``redis_url`` is, in order of preference: ``GRAFLOW_TEST_REDIS_URL`` if set (point the suite at an
existing server), a testcontainers Redis when a Docker engine is reachable, or a private
``redis-server`` process on a free port in a temp dir (these machines have no Docker engine).
``redis`` gives each test an asyncio client on a flushed database.

``tls_redis`` is a private redis-server that serves TLS only, ``acl_redis`` one that also has the
services' ACL users loaded (:mod:`graflow_runtime.redis_acl`; only with a password): tests
connect with ``server.url_for(user)``. Their certificates are made at test time.

``redis_cluster`` is a private Redis Cluster (:class:`LocalRedisCluster`: 3 primaries, 3 replicas,
failover in about 2-3 s; tests may kill its nodes), ``redis_cluster_url`` its URL (or
``GRAFLOW_TEST_REDIS_CLUSTER_URL`` if set), ``redis_on_cluster`` a cluster client on flushed
primaries. Started once per session (per test file under Pants), in about 3-6 s.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from graflow_runtime import redis_acl
from graflow_runtime.local_redis import LocalRedis, LocalRedisCluster, RedisTls
from graflow_runtime.redis_client import connect_cluster
from graflow_runtime.testing.certs import make_ca


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


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalRedisCluster]:
    cluster = LocalRedisCluster().start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def redis_cluster_url(request: pytest.FixtureRequest) -> str:
    explicit = os.environ.get("GRAFLOW_TEST_REDIS_CLUSTER_URL")
    if explicit:
        return explicit
    return request.getfixturevalue("redis_cluster").url


@pytest.fixture
async def redis_on_cluster(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = connect_cluster(redis_cluster_url)
    await client.flushdb()  # on every primary
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def redis_tls(tmp_path_factory: pytest.TempPathFactory) -> RedisTls:
    """Certificates of a TLS redis-server (clients may show theirs: ``--tls-auth-clients optional``)
    and of its clients, from a CA made for the session."""
    ca = make_ca(tmp_path_factory.mktemp("redis-tls"))
    server, client = ca.issue("redis"), ca.issue("graflow-client")
    return RedisTls(ca=ca.cert, cert=server.cert, key=server.key,
                    client_cert=client.cert, client_key=client.key)


@pytest.fixture(scope="session")
def tls_redis(redis_tls: RedisTls) -> Iterator[LocalRedis]:
    """A private redis-server that serves TLS only (no ACL users: its default user is open)."""
    server = LocalRedis(tls=redis_tls).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def acl_redis(redis_tls: RedisTls) -> Iterator[LocalRedis]:
    """A private redis-server over TLS with the services' ACL users loaded (random passwords):
    ``url_for("worker")`` and the other services' users; ``url`` is the operators' user."""
    server = LocalRedis(tls=redis_tls, users=redis_acl.generate_passwords()).start()
    try:
        yield server
    finally:
        server.close()
