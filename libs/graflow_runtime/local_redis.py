"""A private redis-server process on a free loopback port, in its own directory.

Used by ``graflow dev`` and by the test fixtures. It runs with AOF and ``maxmemory-policy
noeviction``, as production Redis must (``appendfsync everysec`` by default, Redis' recommended
setting: a Redis crash may lose the last second of writes; pass ``fsync="always"`` to lose nothing),
and can be stopped, killed and restarted on the same port and data directory (chaos tests do).

With ``tls`` it serves TLS only (no plain port); with ``users`` (passwords of the users of
:mod:`graflow_runtime.redis_acl`) it loads their ACL file: ``url`` is then the operators' (Redis'
default user, with its password) and :meth:`LocalRedis.url_for` gives each service its own (issue 14).

:class:`LocalRedisCluster` is a Redis Cluster of such processes (3 primaries and their replicas by
default) with a short ``cluster-node-timeout``, so that a failover fits in a test (issue 10).
"""

from __future__ import annotations

import random
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlencode

import redis as sync_redis
from redis.crc import key_slot

from graflow_runtime import redis_acl
from graflow_runtime.processes import dies_with_parent


class RedisServerError(RuntimeError):
    """redis-server is missing or did not come up."""


# Where free_port() looks: below the kernel's ephemeral range, which outgoing connections (to
# Redis, between services) draw from. A port found free by binding port 0 is in that range, and a
# connection opened by any process before the service binds it can take it ("Failed to bind"
# under load); a random port below the range is taken only by another free_port() that picks
# the same one in the same instant.
_LOW_PORT = 10_000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_start() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def free_port() -> int:
    """A loopback TCP port nothing listens on, outside the ephemeral range when possible."""
    top = _ephemeral_start() - 1
    for _ in range(100):
        port = random.randint(_LOW_PORT, top) if top > _LOW_PORT else 0
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# A Redis Cluster node also listens on its port + 10000 (the cluster bus).
CLUSTER_BUS_OFFSET = 10_000


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port() -> int:
    """A port for a Redis Cluster node: it and its bus port (+10000) are free, both below the
    ephemeral range when possible."""
    top = _ephemeral_start() - 1 - CLUSTER_BUS_OFFSET
    for _ in range(200):
        port = random.randint(_LOW_PORT, top) if top > _LOW_PORT else random.randint(_LOW_PORT, 55_000)
        if _bindable(port) and _bindable(port + CLUSTER_BUS_OFFSET):
            return port
    raise RedisServerError("found no free pair of ports (a node's and its cluster bus')")


@dataclass(frozen=True)
class RedisTls:
    """TLS of a :class:`LocalRedis`: the server's certificate and key, the CA that signed it (which
    its clients trust, and which it checks client certificates with), whether clients must show
    one (redis-server's ``--tls-auth-clients``), and the certificate its URLs' clients show."""

    ca: Path
    cert: Path
    key: Path
    client_auth: Literal["no", "optional", "yes"] = "optional"
    client_cert: Path | None = None
    client_key: Path | None = None


class LocalRedis:
    def __init__(self, directory: Path | None = None, port: int | None = None,
                 executable: str | None = None, fsync: str = "everysec", *,
                 tls: RedisTls | None = None, users: Mapping[str, str] | None = None,
                 cluster_node_timeout_ms: int | None = None) -> None:
        if fsync not in ("always", "everysec", "no"):
            raise ValueError(f"fsync must be always, everysec or no, not {fsync!r}")
        self.fsync = fsync
        self.tls = tls
        self.users = dict(users) if users is not None else None
        # A node of a Redis Cluster (its state in nodes.conf of its directory) when set.
        self.cluster_node_timeout_ms = cluster_node_timeout_ms
        self.executable = executable or shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(self.executable).exists():
            raise RedisServerError(
                "redis-server not found: install it (apt-get install redis-server) or set PATH"
            )
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="graflow-redis-"))
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL of the operators' user when the ACL users are loaded (every command, every key)."""
        return self.url_for(redis_acl.ADMIN if self.users is not None else None)

    def url_for(self, user: str | None) -> str:
        """The URL a client connects with as ``user`` (None: without credentials) with its password,
        over TLS when the server has it (with the CA and, if any, the client certificate)."""
        credentials = ""
        if user is not None:
            password = (self.users or {}).get(user)
            if password is None:
                raise ValueError(f"this redis-server has no user {user!r}")
            credentials = f"{quote(user, safe='')}:{quote(password, safe='')}@"
        if self.tls is None:
            return f"redis://{credentials}127.0.0.1:{self.port}/0"
        options = {"ssl_ca_certs": self.tls.ca}
        if self.tls.client_cert and self.tls.client_key:
            options.update(ssl_certfile=self.tls.client_cert, ssl_keyfile=self.tls.client_key)
        return f"rediss://{credentials}127.0.0.1:{self.port}/0?{urlencode(options)}"

    def _arguments(self) -> list[str]:
        listen = ["--port", str(self.port)]
        if self.tls is not None:
            listen = [
                "--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert),
                "--tls-key-file", str(self.tls.key), "--tls-ca-cert-file", str(self.tls.ca),
                "--tls-auth-clients", self.tls.client_auth,
            ]
        if self.users is not None:
            aclfile = self.directory / "users.acl"
            aclfile.write_text(redis_acl.render(self.users))
            aclfile.chmod(0o600)
            listen += ["--aclfile", str(aclfile)]
        if self.cluster_node_timeout_ms is not None:
            listen += [
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.cluster_node_timeout_ms),
            ]
            if self.users is not None:  # a replica logs in to its primary as the operators' user
                listen += ["--masteruser", redis_acl.ADMIN, "--masterauth", self.users[redis_acl.ADMIN]]
        return [
            self.executable, *listen, "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", self.fsync,
            "--save", "", "--maxmemory-policy", "noeviction", "--protected-mode", "yes",
        ]

    def start(self, timeout_s: float = 10.0) -> LocalRedis:
        log_file = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(
            dies_with_parent(self._arguments()), stdout=log_file, stderr=subprocess.STDOUT,
        )
        log_file.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RedisServerError(
                    f"redis-server exited with {self.process.returncode}; "
                    f"its log ends with:\n{self.log_tail()}"
                )
            if self._persistence_settled():
                return self
            time.sleep(0.02)
        raise RedisServerError(
            f"redis-server did not become ready on port {self.port} within {timeout_s}s; "
            f"its log ends with:\n{self.log_tail()}"
        )

    def _persistence_settled(self) -> bool:
        """True once Redis answers and has finished creating its AOF. Redis 7 writes the base AOF in
        a forked child right after start; a kill during that leaves files the next start aborts on,
        so tests that kill Redis must not do it before this is done."""
        try:
            with self._admin_socket() as sock:
                sock.sendall(b"INFO persistence\r\n")
                reply = b""
                while not reply.startswith(b"-") and (
                    b"aof_rewrite_scheduled" not in reply or not reply.endswith(b"\r\n")
                ):
                    chunk = sock.recv(65536)
                    if not chunk:
                        return False
                    reply += chunk
        except OSError:
            return False
        if reply.startswith(b"-"):  # still loading the AOF
            return False
        # Whole lines: "loading:0" is also a substring of "async_loading:0", present while loading.
        lines = set(reply.split(b"\r\n"))
        settled = (b"loading:0", b"aof_rewrite_in_progress:0", b"aof_rewrite_scheduled:0")
        return all(flag in lines for flag in settled)

    @contextmanager
    def _admin_socket(self) -> Iterator[socket.socket]:
        """A raw connection (TLS when the server has it), authenticated as the operators' user when
        the ACL users are loaded."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
            sock = raw
            if self.tls is not None:
                context = ssl.create_default_context(cafile=str(self.tls.ca))
                if self.tls.client_cert and self.tls.client_key:
                    context.load_cert_chain(self.tls.client_cert, self.tls.client_key)
                sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
            with sock:
                if self.users is not None:
                    self._authenticate(sock)
                yield sock

    def _authenticate(self, sock: socket.socket) -> None:
        assert self.users is not None
        words = [b"AUTH", redis_acl.ADMIN.encode(), self.users[redis_acl.ADMIN].encode()]
        sock.sendall(b"*3\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words))
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(1024)
            if not chunk:
                raise OSError("redis-server closed the connection")
            reply += chunk
        if reply != b"+OK\r\n":
            raise OSError(f"AUTH as {redis_acl.ADMIN} failed: {reply!r}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.directory / "redis.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=10)
        self.process = None

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalRedisCluster:
    """A Redis Cluster of private redis-server processes on free loopback ports, each in its own
    directory under one: ``primaries`` primaries with ``replicas`` replicas each (3 and 1: six
    processes), created with ``redis-cli --cluster create``. Every node runs with AOF and
    ``noeviction`` as :class:`LocalRedis` does, and ``cluster-node-timeout`` ``node_timeout_ms``:
    a primary that stops answering is replaced by its replica about that long after (plus the
    election, well under a second here). With ``users`` (passwords of the users of
    :mod:`graflow_runtime.redis_acl`) every node loads their ACL file, and replicas authenticate to
    their primaries as the operators' user; no TLS (the deploy manifests have both).

    ``url`` names every node (comma-separated: a cluster client asks the first it reaches for the
    slot map, so a process started while a node is down still finds the cluster), as the operators'
    user when there are users; ``url_for(user)`` as another; ``urls`` are the nodes' own URLs."""

    def __init__(self, directory: Path | None = None, *, primaries: int = 3, replicas: int = 1,
                 node_timeout_ms: int = 1500, fsync: str = "everysec",
                 users: Mapping[str, str] | None = None) -> None:
        if primaries < 3:
            raise ValueError(f"a Redis Cluster needs at least 3 primaries, not {primaries}")
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="graflow-redis-cluster-"))
        self.replicas = replicas
        self.nodes: list[LocalRedis] = []
        for index in range(primaries * (1 + replicas)):
            node_dir = self.directory / f"node-{index}"
            node_dir.mkdir(parents=True, exist_ok=True)
            self.nodes.append(LocalRedis(node_dir, port=free_cluster_port(), fsync=fsync, users=users,
                                         cluster_node_timeout_ms=node_timeout_ms))
        self.users = dict(users) if users is not None else None
        self._cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"

    @property
    def url(self) -> str:
        return self.url_for(redis_acl.ADMIN if self.users is not None else None)

    def url_for(self, user: str | None) -> str:
        """The cluster's URL as ``user`` (None: without credentials), every node named."""
        first = self.nodes[0].url_for(user)  # redis://<credentials>127.0.0.1:<port>/0
        head, _, tail = first.partition(f"127.0.0.1:{self.nodes[0].port}")
        return head + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes) + tail

    def _credentials(self) -> list[str]:
        if self.users is None:
            return []
        return ["--user", redis_acl.ADMIN, "--pass", self.users[redis_acl.ADMIN], "--no-auth-warning"]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self, timeout_s: float = 30.0) -> LocalRedisCluster:
        if not Path(self._cli).exists():
            raise RedisServerError("redis-cli not found: install it (apt-get install redis-tools)")
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            created = subprocess.run(
                [self._cli, *self._credentials(), "--cluster", "create", *addresses,
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                capture_output=True, text=True, timeout=timeout_s, check=False,
            )
            if created.returncode != 0:
                raise RedisServerError(
                    f"redis-cli --cluster create failed ({created.returncode}):\n"
                    f"{created.stdout[-2000:]}{created.stderr[-2000:]}"
                )
            self.wait_until_ok(timeout_s)
        except BaseException:
            self.close()
            raise
        return self

    def _admin(self, node: LocalRedis) -> sync_redis.Redis:
        return sync_redis.Redis.from_url(node.url, socket_timeout=2, socket_connect_timeout=1)

    def _call(self, node: LocalRedis, *command: str) -> Any:
        """The reply of ``node`` (as redis-py parses it), or None when it does not answer."""
        client = self._admin(node)
        try:
            return client.execute_command(*command)
        except (sync_redis.ConnectionError, sync_redis.TimeoutError, sync_redis.ResponseError):
            return None
        finally:
            client.close()

    def running(self) -> list[LocalRedis]:
        return [node for node in self.nodes if node.process is not None]

    def _replication(self, node: LocalRedis) -> dict[str, Any]:
        return self._call(node, "INFO", "replication") or {}

    def _healthy(self) -> bool:
        """Every running node says ``cluster_state:ok`` and sees the same primaries owning all
        16384 slots, and every replica among them has its replication link up."""
        views = set()
        for node in self.running():
            info = self._call(node, "CLUSTER", "INFO") or b""
            if b"cluster_state:ok" not in info:
                return False
            views.add(tuple(sorted(self._slot_owners(node).items())))
            replication = self._replication(node)
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return False
        return len(views) == 1

    def _slot_owners(self, node: LocalRedis) -> dict[tuple[int, int], int]:
        """(first, last) slot of each range -> port of its primary, as ``node`` sees it."""
        ranges = self._call(node, "CLUSTER", "SLOTS") or []
        return {(int(first), int(last)): int(primary[1]) for first, last, primary, *_ in ranges}

    def wait_until_ok(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._healthy():
            if time.monotonic() > deadline:
                raise RedisServerError(f"the cluster did not become ok within {timeout_s}s")
            time.sleep(0.1)

    def primary_of_slot(self, slot: int) -> LocalRedis:
        """The node that owns ``slot``, as the first running node that answers sees it."""
        for node in self.running():
            for (first, last), port in self._slot_owners(node).items():
                if first <= slot <= last:
                    return self._node_on(port)
        raise RedisServerError(f"no running node answers for slot {slot}")

    def primary_of(self, key: str | bytes) -> LocalRedis:
        return self.primary_of_slot(key_slot(key.encode() if isinstance(key, str) else key))

    def replicas_of(self, primary: LocalRedis) -> list[LocalRedis]:
        found = []
        for node in self.running():
            if node is primary:
                continue
            replication = self._replication(node)
            if replication.get("role") == "slave" and int(replication.get("master_port", 0)) == primary.port:
                found.append(node)
        return found

    def _node_on(self, port: int) -> LocalRedis:
        for node in self.nodes:
            if node.port == port:
                return node
        raise RedisServerError(f"no node of this cluster listens on port {port}")

    def kill(self, node: LocalRedis) -> None:
        """SIGKILL ``node`` (its replica takes its slots after ``node_timeout_ms``)."""
        node.stop(kill=True)

    def wait_for_failover(self, slot: int, old: LocalRedis, timeout_s: float = 15.0) -> LocalRedis:
        """The node that took ``slot`` over from ``old``, once the running nodes agree on it and
        the cluster is ok again."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._healthy():
                new = self.primary_of_slot(slot)
                if new is not old:
                    return new
            time.sleep(0.05)
        raise RedisServerError(f"slot {slot} was not failed over from port {old.port} in {timeout_s}s")

    def restart(self, node: LocalRedis, timeout_s: float = 30.0) -> None:
        """Start a stopped node again (same port and directory): it rejoins as a replica of the
        primary that replaced it."""
        node.start()
        self.wait_until_ok(timeout_s)

    def close(self) -> None:
        # SIGKILL: the data goes with the directory, and a primary stopped with SIGTERM waits up
        # to 10 s (shutdown-timeout) for replicas that lag.
        for node in self.nodes:
            node.stop(kill=True)
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
