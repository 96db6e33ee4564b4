"""Redis connections and the durability check every service runs at start-up."""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import HIREDIS_AVAILABLE

from graflow_runtime import keys
from graflow_runtime.errors import ConfigurationError
from graflow_runtime.keys import Layout

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


# Query parameters of a Redis URL that hold secrets: the user's password and a TLS key's passphrase.
_SECRET_PARAMETERS = frozenset({"password", "ssl_password"})


def redacted(url: str) -> str:
    """``url`` without its secrets, for logs and error messages: the password of its user part and
    of a ``password`` or ``ssl_password`` query parameter become ``***``. Works on the text alone,
    so a malformed URL (a bad port, say) is redacted too."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":***"
    query = "&".join(
        f"{name}=***" if unquote(name).lower() in _SECRET_PARAMETERS else f"{name}{equals}{value}"
        for name, equals, value in (item.partition("=") for item in parts.query.split("&") if item)
    )
    text = urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host}", query=query))
    # (urlunsplit writes "unix:/path" for "unix:///path": keep the form the URL was given in)
    if parts.netloc or not url.startswith(f"{parts.scheme}://"):
        return text
    return f"{parts.scheme}://{text[len(parts.scheme) + 1 :]}"


_CONNECTIONS = {"redis": _Connection, "rediss": _SSLConnection, "unix": _UnixConnection}


def connect(
    url: str, *, max_connections: int = 64, pool_timeout_s: float = 10.0, client_name: str | None = None
) -> aioredis.Redis:
    """An asyncio client that retries connection errors with backoff (reconnects after restarts).

    At most ``max_connections`` connections; a command issued while all of them are in use waits
    for one to be free (at most ``pool_timeout_s``, then ``ConnectionError``: Redis is too slow
    for the load). redis-py's default pool instead fails such a command at once with "Too many
    connections", so a burst of concurrent requests (say 100 channel updates from a parallel
    group, against a pool of 64) failed some of them as UNAVAILABLE although Redis was fine.

    Blocking reads (XREADGROUP BLOCK) need a socket timeout above their block time; callers block
    for at most a few seconds, so the socket timeout is generous.

    TLS and the ACL user come with the URL (docs/security.md, "Redis"):
    ``rediss://<user>:<password>@host:port/0?ssl_ca_certs=<CA file>`` (plus ``ssl_certfile`` and
    ``ssl_keyfile`` for a client certificate), redis-py's own parameters; the server's certificate
    and host name are verified. They are checked here, so a wrong file or an option the scheme
    does not take is a ``ValueError`` naming it at start-up (redis-py would raise at every command,
    which would look like an unreachable Redis).
    """
    connection_class = _CONNECTIONS.get(url.split("://", 1)[0]) if HIREDIS_AVAILABLE else None
    extra: dict[str, Any] = {"connection_class": connection_class} if connection_class else {}
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        **extra,
        max_connections=max_connections,
        timeout=pool_timeout_s,
        socket_timeout=30,
        socket_connect_timeout=5,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        decode_responses=False,
        client_name=client_name,
        # No CLIENT SETINFO on every new connection: two commands the services' Redis ACL users are
        # not granted (Redis 7.0 does not know it; 7.2+ would log each refusal in ACL LOG).
        driver_info=None,
    )
    _check_options(pool)
    client = aioredis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # the client owns its pool (as with from_url)
    return client


def _check_options(pool: aioredis.ConnectionPool) -> None:
    """Build what a connection of ``pool`` is made of (no I/O): its options and TLS files."""
    try:
        connection = pool.connection_class(**pool.connection_kwargs)
    except TypeError as exc:  # an option the scheme does not take
        raise ValueError(f"{exc} (TLS options, ssl_*, need the rediss:// scheme)") from None
    if isinstance(connection, aioredis.SSLConnection):
        try:
            connection.ssl_context.get()
        except (OSError, ssl.SSLError) as exc:  # a missing or unreadable file, a bad PEM, a wrong key
            named = ", ".join(
                f"{name}={pool.connection_kwargs[name]}"
                for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
                if pool.connection_kwargs.get(name)
            )
            raise ValueError(f"its TLS files cannot be used ({named or 'none given'}): {exc}") from None


async def check_durability(client: aioredis.Redis) -> list[str]:
    """Warn loudly unless Redis keeps data (AOF) and never evicts keys (noeviction).

    Run state lives in Redis: an evicted key is a lost run, a restart without AOF loses accepted
    work. Returns the problems found (also logged at error level). The settings are read with
    ``CONFIG GET``; where CONFIG is refused (the services' ACL users may not run it, some managed
    Redis services disable it) from ``INFO``, and where that is refused too the check is skipped
    with a warning. An unreachable Redis raises one of :data:`REDIS_UNAVAILABLE`.
    """
    try:
        policy, aof = await _durability_settings(client)
    except ResponseError as exc:  # INFO refused too (a user without it, a renamed command)
        if not isinstance(exc, NoPermissionError) and "INFO" not in str(exc).upper():
            raise
        log.warning("could not check Redis durability settings", error=str(exc))
        return []
    problems: list[str] = []
    if policy != "noeviction":
        problems.append(f"maxmemory-policy is {policy!r}; must be 'noeviction' or Redis may drop run state")
    if not aof:
        problems.append(
            "appendonly is off; a Redis restart loses accepted runs (start it with --appendonly yes)"
        )
    for problem in problems:
        log.error("redis is not durable", problem=problem)
    return problems


async def _durability_settings(client: aioredis.Redis) -> tuple[str, bool]:
    """(maxmemory-policy, AOF on) from CONFIG GET, or from INFO where CONFIG is refused."""
    try:
        policy = _text(await client.config_get("maxmemory-policy"), "maxmemory-policy")
        return policy, _text(await client.config_get("appendonly"), "appendonly") == "yes"
    except ResponseError as exc:
        if "CONFIG" not in str(exc).upper():
            raise
    memory, persistence = await client.info("memory"), await client.info("persistence")
    return str(memory.get("maxmemory_policy", "")), str(persistence.get("aof_enabled", "0")) == "1"


async def check_layout(client: aioredis.Redis, layout: Layout) -> None:
    """Record the key layout in Redis (the first process of a deployment) or check that it is the
    one recorded: processes with different layouts would read and write different keys, so one
    that differs refuses to start (:class:`ConfigurationError`, exit 2), naming both."""
    wanted = layout.describe()
    await client.set(keys.LAYOUT_KEY, wanted, nx=True)
    recorded = await client.get(keys.LAYOUT_KEY)
    found = recorded.decode() if isinstance(recorded, bytes) else str(recorded)
    if found != wanted:
        raise ConfigurationError(
            f"this Redis holds data of the key layout {found!r} (in {keys.LAYOUT_KEY}), and this "
            f"process is set to {wanted!r}: set REDIS_CELLS (and REDIS_CLUSTER) as every other "
            "process of the deployment has them; the cell count is fixed for the life of the data"
        )


def _text(config: dict[Any, Any], name: str) -> str:
    value = config.get(name.encode(), config.get(name, b""))
    return value.decode() if isinstance(value, bytes) else str(value)
