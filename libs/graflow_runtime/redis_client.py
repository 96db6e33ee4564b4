"""Redis connections and the durability check every service runs at start-up."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import HIREDIS_AVAILABLE

log = structlog.get_logger(__name__)

# Errors that mean "Redis is not reachable right now"; loops back off and carry on.
REDIS_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


class _HiredisPacking:
    """Commands packed by hiredis (C), as redis-py's synchronous client does when hiredis is
    installed; its asyncio client packs them in Python, ~7x the CPU for an ``EVALSHA`` with 25
    arguments (the scheduler makes one per outcome). Same bytes, same ``DataError`` for bad types."""

    _serializer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        return self._serializer.pack(*args)


class _Connection(_HiredisPacking, aioredis.Connection):
    pass


class _SSLConnection(_HiredisPacking, aioredis.SSLConnection):
    pass


class _UnixConnection(_HiredisPacking, aioredis.UnixDomainSocketConnection):
    pass


_CONNECTIONS = {"redis": _Connection, "rediss": _SSLConnection, "unix": _UnixConnection}


# Seconds a command waits for a free pooled connection before it fails as "Redis unavailable".
POOL_WAIT_S = 10.0


def connect(url: str, *, max_connections: int = 64) -> aioredis.Redis:
    """An asyncio client that retries connection errors with backoff (reconnects after restarts).

    At most ``max_connections`` sockets; a command that finds them all busy waits its turn (up to
    ``POOL_WAIT_S``) instead of failing, so a burst of concurrent RPCs queues rather than erroring.
    Blocking reads (XREADGROUP BLOCK) need a socket timeout above their block time; callers block
    for at most a few seconds, so the socket timeout is generous.
    """
    connection_class = _CONNECTIONS.get(url.split("://", 1)[0]) if HIREDIS_AVAILABLE else None
    extra: dict[str, Any] = {"connection_class": connection_class} if connection_class else {}
    return aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(
        url,
        **extra,
        max_connections=max_connections,
        timeout=POOL_WAIT_S,
        socket_timeout=30,
        socket_connect_timeout=5,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        decode_responses=False,
    ))


async def check_durability(client: aioredis.Redis) -> list[str]:
    """Warn loudly unless Redis keeps data (AOF) and never evicts keys (noeviction).

    Run state lives in Redis: an evicted key is a lost run, a restart without AOF loses accepted
    work. Returns the problems found (also logged at error level).
    """
    problems: list[str] = []
    config = await client.config_get("maxmemory-policy")
    policy = config.get(b"maxmemory-policy", config.get("maxmemory-policy", b""))
    policy = policy.decode() if isinstance(policy, bytes) else str(policy)
    if policy != "noeviction":
        problems.append(f"maxmemory-policy is {policy!r}; must be 'noeviction' or Redis may drop run state")
    aof = await client.config_get("appendonly")
    value = aof.get(b"appendonly", aof.get("appendonly", b""))
    value = value.decode() if isinstance(value, bytes) else str(value)
    if value != "yes":
        problems.append(
            "appendonly is off; a Redis restart loses accepted runs (start it with --appendonly yes)"
        )
    for problem in problems:
        log.error("redis is not durable", problem=problem)
    return problems
