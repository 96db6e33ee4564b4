"""A private redis-server process on a free loopback port, in its own directory.

Used by ``graflow dev`` and by the test fixtures. It runs with AOF and ``maxmemory-policy
noeviction``, as production Redis must (``appendfsync everysec`` by default, Redis' recommended
setting: a Redis crash may lose the last second of writes; pass ``fsync="always"`` to lose nothing),
and can be stopped, killed and restarted on the same port and data directory (chaos tests do).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from graflow_runtime.processes import parent_death_signal


class RedisServerError(RuntimeError):
    """redis-server is missing or did not come up."""


def free_port() -> int:
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
            [
                self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", self.fsync,
                "--save", "", "--maxmemory-policy", "noeviction", "--protected-mode", "yes",
            ],
            stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=parent_death_signal(),
        )
        log_file.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RedisServerError(
                    f"redis-server exited with {self.process.returncode}; see {self.directory / 'redis.log'}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        raise RedisServerError(f"redis-server did not answer on port {self.port} within {timeout_s}s")

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
