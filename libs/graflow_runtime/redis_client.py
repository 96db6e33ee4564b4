"""Redis connections and the durability check every service runs at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ssl
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import redis.asyncio as aioredis
import structlog
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import (
    ClusterDownError,
    NoPermissionError,
    RedisClusterException,
    RedisClusterUnreachableError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import HIREDIS_AVAILABLE

from graflow_runtime import keys
from graflow_runtime.errors import ConfigurationError
from graflow_runtime.keys import Layout

log = structlog.get_logger(__name__)

# Errors that mean "Redis is not reachable right now"; loops back off and carry on. On a cluster
# also: a slot without a primary for a moment (CLUSTERDOWN, TRYAGAIN during a failover) and no
# node reachable (RedisClusterUnreachableError, SlotNotCoveredError: RedisClusterException).
REDIS_UNAVAILABLE = (
    RedisConnectionError, RedisTimeoutError, ConnectionError, OSError,
    ClusterDownError, TryAgainError, RedisClusterUnreachableError, SlotNotCoveredError,
)
# What a failed Redis command can raise: any error Redis answered (RedisError) and the above. On a
# cluster the above holds errors that are no RedisError (RedisClusterUnreachableError and
# SlotNotCoveredError, raised during a failover when a topology refresh reaches no node): code that
# catches RedisError alone lets them through.
REDIS_ERRORS = (RedisError, *REDIS_UNAVAILABLE)

# A Redis client of either kind: a single Redis, or a Redis Cluster (``connect(..., cluster=True)``).
RedisClient = aioredis.Redis | RedisCluster


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
    url: str, *, max_connections: int = 64, pool_timeout_s: float = 10.0, client_name: str | None = None,
    cluster: bool | None = None, home_key: str | None = None,
) -> RedisClient:
    """An asyncio client that retries connection errors with backoff (reconnects after restarts).

    With ``cluster`` (the setting ``REDIS_CLUSTER``) a Redis Cluster client (:func:`connect_cluster`):
    the URL names any node of the cluster, the options are the same (``home_key`` only matters on
    a cluster). ``None``: as the process's key
    layout says (``keys.configure``, set at start-up from the same setting), so that every client a
    service makes follows its configuration.

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
    if cluster if cluster is not None else keys.layout().cluster:
        return connect_cluster(
            url, max_connections=max_connections, pool_timeout_s=pool_timeout_s, client_name=client_name,
            home_key=home_key,
        )
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


# A cluster client retries a command for longer than the single one: a slot has no primary from
# the moment its primary fails until its replica is elected, cluster-node-timeout plus about a
# second (0.05 s doubling up to 1 s between attempts: ~6.5 s in all).
_CLUSTER_RETRIES = 10


# The cluster client whose place in flight the current task holds (see _BoundedCluster._permit).
_HOLDER: contextvars.ContextVar[RedisCluster | None] = contextvars.ContextVar(
    "graflow_redis_holder", default=None
)

# Commands whose keys follow a STREAMS word: the first half of what follows it.
_STREAM_READS = frozenset({"XREAD", "XREADGROUP"})


class _BoundedCluster(RedisCluster):
    """redis-py's asyncio cluster client, whose commands wait for a free connection as the single
    client's ``BlockingConnectionPool`` does. redis-py's cluster pool has no such wait: a command
    issued while a node's ``max_connections`` are all in use fails at once with
    ``MaxConnectionsError``. Here at most ``max_connections`` commands and pipelines are in flight
    at a time (each holds at most one connection per node, so no node's pool runs out), a further
    one waits up to ``pool_timeout_s`` and then raises ``ConnectionError``."""

    def __init__(self, *args: Any, pool_timeout_s: float, home_key: str | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_flight = asyncio.Semaphore(kwargs["max_connections"])
        self._pool_timeout_s = pool_timeout_s
        self._home_key = home_key

    def get_default_node(self) -> ClusterNode:
        """With a ``home_key``, the primary that owns its slot now (keyless commands go there, and
        the slot map follows failovers), else redis-py's default node."""
        if self._home_key is not None and self.nodes_manager.slots_cache:
            return self.get_node_from_key(self._home_key)
        return super().get_default_node()

    @contextlib.asynccontextmanager
    async def _permit(self) -> AsyncIterator[None]:
        """One of the ``max_connections`` places in flight, for a command or a pipeline. What
        redis-py runs within one (a pipeline's command redirected by MOVED or ASK, run again as a
        command) uses it: waiting for a second place could wait on itself."""
        if _HOLDER.get() is self:
            yield
            return
        try:
            await asyncio.wait_for(self._in_flight.acquire(), self._pool_timeout_s)
        except TimeoutError:
            raise RedisConnectionError(
                f"no free Redis connection within {self._pool_timeout_s}s (Redis is too slow for the load)"
            ) from None
        holding = _HOLDER.set(self)
        try:
            yield
        finally:
            _HOLDER.reset(holding)
            self._in_flight.release()

    async def _determine_slot(self, command: str, *args: Any) -> int:
        """The slot of a command; XREAD's and XREADGROUP's from their keys here. redis-py asks one
        fixed node for the keys of such commands (``COMMAND GETKEYS``): a round trip before every
        read, and, once that node has died, a ``ConnectionError`` raised before redis-py's retries,
        so a reader whose parser node was the failed primary never read again."""
        if command.upper() in _STREAM_READS:
            words = [a.upper() if isinstance(a, str) else a for a in args]
            marker = words.index("STREAMS") if "STREAMS" in words else words.index(b"STREAMS")
            rest = args[marker + 1 :]
            slots = {self.keyslot(key) for key in rest[: len(rest) // 2]}
            if len(slots) != 1:
                raise RedisClusterException(f"{command} - all keys must map to the same key slot")
            return slots.pop()
        return await super()._determine_slot(command, *args)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self._permit():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return _BoundedPipeline(self, transaction)


class _BoundedPipeline(ClusterPipeline):
    """A pipeline of :class:`_BoundedCluster`: its ``execute`` counts as one command in flight.
    With ``transaction=True`` (MULTI/EXEC) every key must be in one slot (``CrossSlotTransactionError``
    otherwise): the services' transactions touch keys of one cell."""

    cluster_client: _BoundedCluster

    async def execute(self, *args: Any, **kwargs: Any) -> list[Any]:
        async with self.cluster_client._permit():
            return await super().execute(*args, **kwargs)


def connect_cluster(
    url: str, *, max_connections: int = 64, pool_timeout_s: float = 10.0, client_name: str | None = None,
    home_key: str | None = None,
) -> RedisCluster:
    """A Redis Cluster client (redis-py's, which follows MOVED/ASK redirections and failovers by
    refreshing its slot map) with the guarantees of :func:`connect`: commands packed by hiredis,
    TLS options checked at once, at most ``max_connections`` commands in flight (each to its
    node; a further one waits up to ``pool_timeout_s``), connection errors and a slot without a
    primary retried with backoff for about as long as a failover takes.

    ``home_key``: the client's keyless commands (``CLIENT ID``, ``CLIENT UNBLOCK``, ``WAIT``...) go
    to the primary that owns that key's slot, whichever it is after a failover. With
    ``max_connections=1`` the client has one connection to that node, so a blocking read of the
    slot's keys and its ``CLIENT ID`` share it: the worker's reader of a cell's lanes, and a second
    such client (same ``home_key``) unblocks it with ``CLIENT UNBLOCK``.

    ``url`` names any node, or several, comma-separated (``redis://u:p@h1:7000,h2:7000/0``): the
    client asks the first it reaches for the others, so a process that starts while one node is
    down needs another one named (or one DNS name resolving to several nodes). Its ``/<db>`` must be
    ``/0`` (a cluster has one database) and ``unix://`` is refused (cluster nodes announce TCP
    addresses)."""
    scheme = url.split("://", 1)[0]
    if scheme not in ("redis", "rediss"):
        raise ValueError(f"a Redis Cluster is reached over redis:// or rediss://, not {scheme}://")
    parts = urlsplit(url)
    if scheme == "redis" and "ssl_" in parts.query:
        raise ValueError("TLS options, ssl_*, need the rediss:// scheme")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    first, *others = hosts.split(",")
    seeds = [_seed(address) for address in others]
    try:
        client = _BoundedCluster.from_url(
            urlunsplit(parts._replace(netloc=f"{userinfo}{at}{first}")),
            startup_nodes=[ClusterNode(host, port) for host, port in seeds],
            pool_timeout_s=pool_timeout_s,
            home_key=home_key,
            max_connections=max_connections,
            socket_timeout=30,
            socket_connect_timeout=5,
            health_check_interval=15,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=_CLUSTER_RETRIES),
            decode_responses=False,
            client_name=client_name,
            driver_info=None,  # no CLIENT SETINFO (see connect)
        )
    except RedisClusterException as exc:  # a database other than 0, say
        raise ValueError(str(exc)) from None
    if HIREDIS_AVAILABLE:
        packed = _SSLConnection if scheme == "rediss" else _Connection
        client.connection_kwargs["connection_class"] = packed  # the nodes found from now on
        for node in client.startup_nodes:
            node.connection_class = packed
    _check_connection(client.startup_nodes[0].connection_class, client.startup_nodes[0].connection_kwargs)
    return client


def _seed(address: str) -> tuple[str, int]:
    """``host:port`` of a node named in a cluster URL."""
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or not host:
        raise ValueError(f"a node of a Redis Cluster URL must be host:port, not {address!r}")
    return host.strip("[]"), int(port)


def _check_options(pool: aioredis.ConnectionPool) -> None:
    """Build what a connection of ``pool`` is made of (no I/O): its options and TLS files."""
    _check_connection(pool.connection_class, pool.connection_kwargs)


def _check_connection(connection_class: type[aioredis.Connection], kwargs: dict[str, Any]) -> None:
    try:
        connection = connection_class(**kwargs)
    except TypeError as exc:  # an option the scheme does not take
        raise ValueError(f"{exc} (TLS options, ssl_*, need the rediss:// scheme)") from None
    if isinstance(connection, aioredis.SSLConnection):
        try:
            connection.ssl_context.get()
        except (OSError, ssl.SSLError) as exc:  # a missing or unreadable file, a bad PEM, a wrong key
            named = ", ".join(
                f"{name}={kwargs[name]}"
                for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
                if kwargs.get(name)
            )
            raise ValueError(f"its TLS files cannot be used ({named or 'none given'}): {exc}") from None


async def check_durability(client: RedisClient) -> list[str]:
    """Warn loudly unless Redis keeps data (AOF) and never evicts keys (noeviction); on a cluster,
    on every primary (those that the client's slot map names; replicas are not checked).

    Run state lives in Redis: an evicted key is a lost run, a restart without AOF loses accepted
    work. Returns the problems found (also logged at error level). The settings are read with
    ``CONFIG GET``; where CONFIG is refused (the services' ACL users may not run it, some managed
    Redis services disable it) from ``INFO``, and where that is refused too the check is skipped
    with a warning. An unreachable Redis raises one of :data:`REDIS_UNAVAILABLE`.
    """
    if isinstance(client, RedisCluster):
        await client.initialize()
        targets: list[ClusterNode | None] = list(client.get_nodes())
    else:
        targets = [None]
    problems: list[str] = []
    for target in targets:
        try:
            policy, aof = await _durability_settings(client, target)
        except ResponseError as exc:  # INFO refused too (a user without it, a renamed command)
            if not isinstance(exc, NoPermissionError) and "INFO" not in str(exc).upper():
                raise
            log.warning("could not check Redis durability settings", error=str(exc))
            return []
        where = f" (node {target.name})" if target is not None else ""
        if policy != "noeviction":
            problems.append(
                f"maxmemory-policy is {policy!r}{where}; must be 'noeviction' or Redis may drop run state"
            )
        if not aof:
            problems.append(
                f"appendonly is off{where}; a Redis restart loses accepted runs "
                "(start it with --appendonly yes)"
            )
    for problem in problems:
        log.error("redis is not durable", problem=problem)
    return problems


async def _durability_settings(client: RedisClient, node: ClusterNode | None) -> tuple[str, bool]:
    """(maxmemory-policy, AOF on) from CONFIG GET, or from INFO where CONFIG is refused; of
    ``node`` of a cluster."""
    target: dict[str, Any] = {"target_nodes": node} if node is not None else {}
    try:
        policy = _text(await client.config_get("maxmemory-policy", **target), "maxmemory-policy")
        return policy, _text(await client.config_get("appendonly", **target), "appendonly") == "yes"
    except ResponseError as exc:
        if "CONFIG" not in str(exc).upper():
            raise
    memory = await client.info("memory", **target)
    persistence = await client.info("persistence", **target)
    return str(memory.get("maxmemory_policy", "")), str(persistence.get("aof_enabled", "0")) == "1"


async def check_layout(client: RedisClient, layout: Layout) -> None:
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
