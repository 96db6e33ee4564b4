"""connect(): the services' asyncio Redis client, against a real redis-server."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlencode

import pytest
from redis.exceptions import NoPermissionError
from structlog.testing import capture_logs

from graflow_runtime.local_redis import LocalRedis, RedisTls
from graflow_runtime.redis_client import REDIS_UNAVAILABLE, check_durability, connect, redacted
from graflow_runtime.testing.certs import make_ca


async def test_a_burst_beyond_the_pool_waits_for_connections_instead_of_failing(redis_url: str) -> None:
    client = connect(redis_url, max_connections=2)
    try:
        # Each BLPOP holds its connection for 0.2 s: ten at once need five times the pool.
        replies = await asyncio.gather(*(client.blpop([f"absent:{i}"], timeout=0.2) for i in range(10)))
        assert replies == [None] * 10
    finally:
        await client.aclose()


async def test_a_command_that_gets_no_connection_within_the_pool_timeout_fails_as_unavailable(
    redis_url: str,
) -> None:
    client = connect(redis_url, max_connections=1, pool_timeout_s=0.2)
    try:
        holder = asyncio.create_task(client.blpop(["absent"], timeout=2))
        await asyncio.sleep(0.1)  # the BLPOP has the only connection
        started = time.monotonic()
        with pytest.raises(REDIS_UNAVAILABLE, match="No connection available"):
            await client.ping()
        assert time.monotonic() - started < 1.5  # the pool timeout, not the BLPOP's 2 s
        assert await holder is None
    finally:
        await client.aclose()


def test_redis_passwords_are_redacted_in_logs():
    assert redacted("redis://user:pw@host:6379/0") == "redis://user:***@host:6379/0"
    assert redacted("redis://host:6379/0") == "redis://host:6379/0"
    assert redacted("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert redacted("redis://user:pw@host:x6379/0") == "redis://user:***@host:x6379/0"  # bad port
    assert redacted("redis://user:p@w@[::1]:6379/0") == "redis://user:***@[::1]:6379/0"
    assert redacted("redis://host/0?db=1&Password=pw") == "redis://host/0?db=1&Password=***"
    assert redacted("unix:///tmp/r.sock?password=pw") == "unix:///tmp/r.sock?password=***"


def test_tls_and_key_passwords_are_redacted_in_logs():
    url = "rediss://worker:s3cret@redis:6380/0?ssl_ca_certs=/ca.pem&ssl_password=k3y"
    assert redacted(url) == "rediss://worker:***@redis:6380/0?ssl_ca_certs=/ca.pem&ssl_password=***"


async def test_a_client_reaches_a_tls_redis_with_its_ca(tls_redis: LocalRedis) -> None:
    assert tls_redis.url.startswith("rediss://")
    client = connect(tls_redis.url)
    try:
        assert await client.ping()
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "change",
    [
        lambda url: url.split("?")[0],  # no CA: the server's certificate is not trusted
        lambda url: url.replace("rediss://", "redis://").split("?")[0],  # plain text to a TLS port
    ],
    ids=["without-the-ca", "without-tls"],
)
async def test_a_client_that_does_not_verify_or_speak_tls_gets_nothing(
    tls_redis: LocalRedis, change: Callable[[str], str]
) -> None:
    client = connect(change(tls_redis.url))
    try:
        with pytest.raises(REDIS_UNAVAILABLE):
            await client.ping()
    finally:
        await client.aclose()


async def test_a_client_with_a_certificate_of_another_ca_is_refused(
    tmp_path: Path, tls_redis: LocalRedis
) -> None:
    other = make_ca(tmp_path / "other", "other-ca").issue("intruder")
    url = tls_redis.url.split("?")[0] + "?" + urlencode(
        {"ssl_ca_certs": tls_redis.tls.ca, "ssl_certfile": other.cert, "ssl_keyfile": other.key}  # type: ignore[union-attr]
    )
    client = connect(url)
    try:
        with pytest.raises(REDIS_UNAVAILABLE):
            await client.ping()
    finally:
        await client.aclose()


async def test_a_redis_that_requires_client_certificates_refuses_a_client_without_one(
    tmp_path: Path, redis_tls: RedisTls
) -> None:
    with LocalRedis(tmp_path, tls=replace(redis_tls, client_auth="yes")) as server:
        with_cert = connect(server.url)
        without = connect(server.url.split("?")[0] + "?" + urlencode({"ssl_ca_certs": redis_tls.ca}))
        try:
            assert await with_cert.ping()
            with pytest.raises(REDIS_UNAVAILABLE):
                await without.ping()
        finally:
            await with_cert.aclose()
            await without.aclose()


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("rediss://127.0.0.1:6380/0?ssl_ca_certs=/nonexistent/ca.pem", "ssl_ca_certs=/nonexistent/ca.pem"),
        ("rediss://127.0.0.1:6380/0?ssl_certfile=/nonexistent/c.pem&ssl_keyfile=/nonexistent/k.pem",
         "ssl_certfile=/nonexistent/c.pem"),
        ("redis://127.0.0.1:6379/0?ssl_ca_certs=/ca.pem", "rediss://"),
    ],
    ids=["missing-ca", "missing-client-certificate", "tls-option-without-tls"],
)
def test_unusable_tls_options_are_refused_at_once_naming_them(url: str, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        connect(url)


async def test_the_durability_check_reads_info_when_config_is_refused(acl_redis: LocalRedis) -> None:
    client = connect(acl_redis.url_for("worker"))
    try:
        with capture_logs() as logs:
            assert await check_durability(client) == []
        assert logs == []  # checked, not skipped with a warning
        with pytest.raises(NoPermissionError):
            await client.config_get("appendonly")
    finally:
        await client.aclose()


async def test_the_durability_check_is_skipped_with_a_warning_when_info_is_refused_too(
    acl_redis: LocalRedis,
) -> None:
    admin = connect(acl_redis.url)
    await admin.acl_setuser("blind", enabled=True, passwords=["+blind-pw"], commands=["+ping"])
    url = acl_redis.url.replace(f"default:{acl_redis.users['default']}@", "blind:blind-pw@")  # type: ignore[index]
    client = connect(url)
    try:
        with capture_logs() as logs:
            assert await check_durability(client) == []
        assert [(e["log_level"], e["event"]) for e in logs] == [
            ("warning", "could not check Redis durability settings")
        ]
    finally:
        await client.aclose()
        await admin.acl_deluser("blind")
        await admin.aclose()
