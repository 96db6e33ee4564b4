"""A private redis-server process on a free loopback port, in its own directory.

Used by ``graflow dev`` and by the test fixtures. It runs with AOF and ``maxmemory-policy
noeviction``, as production Redis must (``appendfsync everysec`` by default, Redis' recommended
setting: a Redis crash may lose the last second of writes; pass ``fsync="always"`` to lose nothing),
and can be stopped, killed and restarted on the same port and data directory (chaos tests do).
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

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


class LocalRedis:
    def __init__(self, directory: Path | None = None, port: int | None = None,
                 executable: str | None = None, fsync: str = "everysec") -> None:
        if fsync not in ("always", "everysec", "no"):
            raise ValueError(f"fsync must be always, everysec or no, not {fsync!r}")
        self.fsync = fsync
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
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> LocalRedis:
        log_file = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(
            dies_with_parent([
                self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", self.fsync,
                "--save", "", "--maxmemory-policy", "noeviction", "--protected-mode", "yes",
            ]),
            stdout=log_file, stderr=subprocess.STDOUT,
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
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
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
