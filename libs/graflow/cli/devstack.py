"""A whole Graflow deployment on one machine, as real processes: ``graflow dev`` and end-to-end tests.

    with LocalStack(workers=2, task_modules=["graflow_examples.etl"]) as stack:
        run = stack.client().submit(etl)
        run.result()

It starts a private redis-server (unless one is given; ``redis_tls`` serves it over TLS only,
``redis_acl`` loads the services' ACL users with random passwords), then the result-store, the
coordinator and the scheduler together, then N workers, each as ``python -m graflow_<service>``
on free loopback ports. The children import exactly what this process can (``PYTHONPATH`` = this
``sys.path``, which also holds under Pants sandboxes and PEX), log JSON to one file per process in
``log_dir``, and are waited for until their gRPC health check reports SERVING. When the
redis-server has the ACL users (started here with ``redis_acl``, or given), each process connects
as its service's own user. Chaos helpers (kill, pause, restart) act on them by name: ``redis``,
``result-store``, ``coordinator``, ``scheduler``, ``worker-<i>``.

With ``tls=StackTls(...)`` (certificates given, none made here) every server serves TLS (mTLS with
``client_auth``), every process and the stack's clients verify the servers against the CA and
present the same certificate as client certificate; the settings reach each process by
environment (``GRAFLOW_<SVC>_TLS_*``), and :meth:`LocalStack.client_env` carries the client's.
Auth is off by default. ``auth_token`` gives every process one shared token (admin at the servers,
docs/security.md); ``role_tokens=True`` generates a token per role instead: the servers accept all
of them (``AUTH_TOKENS``), the scheduler sends the ``service`` token, workers the ``worker`` token,
:meth:`LocalStack.client` the ``client`` token and :meth:`LocalStack.client_env` (the operator at the
terminal: CLI, :class:`graflow.operators.Operators`) the ``admin`` token.

``commands={"scheduler": ["python3.11", "dist/.../scheduler.pex"], ...}`` starts those services
from the given command instead, the way a container runs them: no ``PYTHONPATH``, no virtualenv or
PEX variables of this process, the log directory as working directory (so nothing of a checkout is
importable); the end-to-end test of the PEXes ``./pants package ::`` writes uses it.

``redis_cluster=True`` starts a local Redis Cluster instead (:class:`LocalRedisCluster`: 3 primaries,
3 replicas; ``stack.redis_cluster`` reaches its nodes, to kill one; with ``redis_acl`` its nodes load
the services' ACL users), a :class:`LocalRedisCluster` uses that one (each process as its own user
when it has them), a URL an existing cluster. No TLS on a local cluster. Every
process gets ``REDIS_CLUSTER=true``; ``cells=N`` gives every process ``REDIS_CELLS=N`` (a cluster
or a single Redis: docs/architecture.md, "Redis Cluster: cells").

``replicas={"scheduler": 2, "coordinator": 2, "result-store": 2}`` runs that many processes of a
server (each on a port of its own; the first keeps the service's name, the others are named
``scheduler-1``, ...). :meth:`LocalStack.address` of a service is then the comma-separated list of
its replicas, which every process and the stack's clients are given (docs/architecture.md,
"Replicas"); ``replica_address("scheduler-1")`` is one replica's.

``metrics=True`` gives every process a ``/metrics`` port of its own (``METRICS_PORT``, a free
port fixed for the stack; off otherwise, as the services' default): :meth:`LocalStack.metrics_url`.

``console=True`` also starts the web console (:mod:`graflow.cli.devconsole`) once the services
serve: :attr:`LocalStack.console_url`, HTTPS with the stack's TLS.

``signing=True`` generates an HMAC key for the stack's bus messages (``SIGNING_KEYS``,
``SIGNING_KEY_ID``) and gives it to the scheduler, the coordinator and every worker
(docs/security.md, "Integrity on the bus").
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from graflow.client import Client
from graflow.errors import LocalStackError
from graflow.operators import Operators
from graflow_runtime.access import Role
from graflow_runtime.auth import token_digest
from graflow_runtime.local_redis import LocalRedis, LocalRedisCluster, RedisTls, free_port
from graflow_runtime.processes import dies_with_parent
from graflow_runtime.redis_acl import generate_passwords
from graflow_runtime.tls import TlsFiles

SERVERS = ("result-store", "coordinator", "scheduler")
MODULES = {
    "result-store": "graflow_result_store",
    "coordinator": "graflow_coordinator",
    "scheduler": "graflow_scheduler",
    "worker": "graflow_worker",
}
# The processes that sign and verify bus messages (graflow_runtime.settings.BusSettings).
SIGNING_SERVICES = ("coordinator", "scheduler", "worker")
PREFIXES = {
    "result-store": "GRAFLOW_RESULT_STORE_",
    "coordinator": "GRAFLOW_COORDINATOR_",
    "scheduler": "GRAFLOW_SCHEDULER_",
    "worker": "GRAFLOW_WORKER_",
}
# The SDK's and CLI's variables (graflow.Client, graflow.operators.Operators).
CLIENT_PREFIX = "GRAFLOW_CLIENT_"


@dataclass(frozen=True)
class StackTls:
    """TLS of a local stack: the CA, and the certificate and key that every server presents and every
    process (services, workers, the stack's clients) shows as client certificate. The certificate
    must be valid for 127.0.0.1 and for TLS servers and clients (``graflow_runtime.testing.certs``
    makes such ones). ``client_auth``: the servers require a client certificate the CA signed."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    client_auth: bool = False

    @classmethod
    def from_dir(cls, directory: Path, *, client_auth: bool = False) -> StackTls:
        """``ca.crt``, ``tls.crt`` and ``tls.key`` of ``directory`` (the names of a Kubernetes TLS
        secret); missing ones are refused here, naming the file."""
        files = [Path(directory) / name for name in ("ca.crt", "tls.crt", "tls.key")]
        missing = [str(path) for path in files if not path.is_file()]
        if missing:
            raise LocalStackError(f"TLS directory {directory} lacks {', '.join(missing)}")
        return cls(*files, client_auth=client_auth)

    def env(self, prefix: str) -> dict[str, str]:
        """The TLS settings of a process whose variables start with ``prefix``."""
        env = {
            f"{prefix}TLS_CA_FILE": str(self.ca_file),
            f"{prefix}TLS_CERT_FILE": str(self.cert_file),
            f"{prefix}TLS_KEY_FILE": str(self.key_file),
        }
        if prefix != CLIENT_PREFIX:
            env[f"{prefix}TLS_CLIENT_AUTH"] = str(self.client_auth).lower()
        return env

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        return TlsFiles(str(self.ca_file), str(self.cert_file), str(self.key_file)).channel_credentials()

    def client_files(self) -> dict[str, str]:
        """Keyword arguments of :class:`graflow.Client` and :class:`graflow.operators.Operators`."""
        return {
            "tls_ca_file": str(self.ca_file),
            "tls_cert_file": str(self.cert_file),
            "tls_key_file": str(self.key_file),
        }


def child_pythonpath() -> str:
    """PYTHONPATH for a child ``python -m ...`` that imports what this process can (this sys.path,
    which also holds under Pants sandboxes and PEX), from any working directory."""
    return os.pathsep.join(os.path.abspath(p) for p in sys.path if p)


def _is_python_path_variable(name: str) -> bool:
    """Variables that would make a child import this process' code (its path, virtualenv or PEX)."""
    return name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") or name.startswith("PEX")


def read_tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 64 * 1024))
            return "\n".join(log.read().decode(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"


class ServiceProcess:
    """One child process: how to start it, its log file and its health endpoint."""

    def __init__(
        self,
        name: str,
        module: str,
        env: Mapping[str, str],
        log_path: Path,
        health_address: str,
        health_credentials: grpc.ChannelCredentials | None = None,
        command: Sequence[str] = (),
    ) -> None:
        self.name = name
        # TLS of the health check: a server's health service shares its API port (and its TLS).
        self.health_credentials = health_credentials
        self.argv = list(command) or [sys.executable, "-m", module]
        # A given command runs as in a container: from the log directory, with nothing on its path.
        self.cwd = log_path.parent if command else None
        self.env = dict(env)
        self.log_path = log_path
        self.health_address = health_address
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def spawn(self) -> None:
        with self.log_path.open("ab") as log:
            # A session of its own: Ctrl-C in the user's terminal reaches only the parent, which
            # stops the children in order. Children also get SIGTERM if the parent dies.
            self.popen = subprocess.Popen(
                dies_with_parent(self.argv),
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_serving(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last_error = "no answer yet"
        if self.health_credentials is not None:
            opened = grpc.secure_channel(self.health_address, self.health_credentials)
        else:
            opened = grpc.insecure_channel(self.health_address)
        with opened as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if not self.running:
                    code = self.popen.returncode if self.popen else None
                    raise self._error(f"exited with code {code} during start-up")
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                    last_error = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                except grpc.RpcError as exc:
                    last_error = f"{exc.code().name}: {exc.details()}"
                time.sleep(0.1)
        raise self._error(f"was not SERVING at {self.health_address} within {timeout_s:.0f}s ({last_error})")

    def _error(self, problem: str) -> LocalStackError:
        return LocalStackError(
            f"{self.name} ({' '.join(self.argv[1:])}) {problem}; log {self.log_path}, last lines:\n"
            f"{read_tail(self.log_path)}"
        )

    def send(self, sig: signal.Signals) -> None:
        if self.running and self.popen is not None:
            self.popen.send_signal(sig)

    def stop(self, sig: signal.Signals = signal.SIGTERM, grace_s: float = 10.0) -> int | None:
        """Send ``sig`` (resuming a paused process first), wait up to ``grace_s``, then kill."""
        self.begin_stop(sig)
        return self.finish_stop(grace_s)

    def begin_stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGCONT)
            self.popen.send_signal(sig)

    def finish_stop(self, grace_s: float) -> int | None:
        """Wait for the exit started by :meth:`begin_stop`; kill after ``grace_s``."""
        if self.popen is None:
            return None
        try:
            self.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)
        return self.popen.returncode


class LocalStack:
    """Redis, result-store, coordinator, scheduler and ``workers`` workers as local processes."""

    def __init__(
        self,
        workers: int = 2,
        task_modules: Sequence[str] = ("graflow_examples.etl",),
        *,
        redis: LocalRedis | None = None,
        redis_tls: RedisTls | None = None,
        redis_acl: bool = False,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        ports: Mapping[str, int] | None = None,
        auth_token: str = "",
        tls: StackTls | None = None,
        role_tokens: bool = False,
        signing: bool = False,
        shutdown_grace_s: float = 5.0,
        start_timeout_s: float = 60.0,
        commands: Mapping[str, Sequence[str]] | None = None,
        redis_cluster: bool | LocalRedisCluster | str = False,
        cells: int = 1,
        replicas: Mapping[str, int] | None = None,
        metrics: bool = False,
        console: bool = False,
    ) -> None:
        if workers < 0:
            raise ValueError("workers must be >= 0")
        if redis_cluster is not False and (redis is not None or redis_tls is not None):
            raise ValueError("redis_cluster runs without redis or redis_tls (a local cluster has no TLS)")
        if redis_acl and isinstance(redis_cluster, (str, LocalRedisCluster)):
            raise ValueError("redis_acl applies to a cluster the stack starts (redis_cluster=True)")
        replicas = dict(replicas or {})
        unknown = sorted(set(replicas) - set(SERVERS))
        if unknown:
            raise ValueError(f"replicas of {', '.join(unknown)}: only {', '.join(SERVERS)} have replicas")
        if any(count < 1 for count in replicas.values()):
            raise ValueError(f"replicas must be >= 1 each, not {replicas}")
        # service -> the names of its processes: the service's own name, then "<service>-1", ...
        self.replica_names = {
            name: [name, *(f"{name}-{i}" for i in range(1, replicas.get(name, 1)))] for name in SERVERS
        }
        self.worker_count = workers
        self.task_modules = list(task_modules)
        if auth_token and role_tokens:
            raise ValueError("auth_token (one shared token) and role_tokens (one per role) are exclusive")
        self.auth_token = auth_token
        self.tls = tls
        # role -> its token, generated for this stack (empty unless role_tokens).
        self.role_tokens: dict[Role, str] = (
            {role: secrets.token_urlsafe(24) for role in Role} if role_tokens else {}
        )
        # "<key id>:<hex secret>", generated per stack (never written anywhere but the children's
        # environment); empty: the stack's bus is unsigned.
        self.signing_key = f"stack-{secrets.token_hex(2)}:{secrets.token_hex(32)}" if signing else ""
        self.shutdown_grace_s = shutdown_grace_s
        self.start_timeout_s = start_timeout_s
        self._extra_env = dict(env or {})
        self.commands = {service: list(argv) for service, argv in (commands or {}).items()}
        self._own_redis = redis is None
        self.redis = redis
        self._redis_tls = redis_tls
        self._redis_acl = redis_acl
        self.cells = cells
        self._cluster_wanted = redis_cluster is not False
        self._own_cluster = redis_cluster is True
        self.redis_cluster = redis_cluster if isinstance(redis_cluster, LocalRedisCluster) else None
        self._cluster_url = redis_cluster if isinstance(redis_cluster, str) else None
        self._own_log_dir = log_dir is None
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="graflow-dev-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Fixed per stack, so a restarted process comes back on the same address.
        self.ports = {
            process: (ports or {}).get(process) or free_port()
            for names in self.replica_names.values()
            for process in names
        }
        # process name -> the port of its /metrics (METRICS_PORT), when ``metrics``; fixed per stack.
        self.metrics_ports: dict[str, int] = (
            {process: free_port() for process in (*self.ports, *(f"worker-{i}" for i in range(workers)))}
            if metrics
            else {}
        )
        self.servers: dict[str, ServiceProcess] = {}
        self.workers: list[ServiceProcess] = []
        # The web console (graflow.cli.devconsole), when ``console``: its port (``ports["console"]``
        # or a free one) and session key are fixed per stack.
        self.console_port = ((ports or {}).get("console") or free_port()) if console else 0
        self._console_session_key = ""
        self.console: ServiceProcess | None = None
        self._started = False
        atexit.register(_stop_at_exit, weakref.ref(self))

    # ---- addresses ----
    def address(self, service: str) -> str:
        """A service's address: its replicas' comma-separated (one replica: its ``host:port``)."""
        return ",".join(self.replica_address(name) for name in self.replica_names[service])

    def replica_address(self, name: str) -> str:
        """The address of one server process, by its name (``scheduler``, ``scheduler-1``...)."""
        return f"127.0.0.1:{self.ports[name]}"

    @property
    def scheduler_address(self) -> str:
        return self.address("scheduler")

    @property
    def result_store_address(self) -> str:
        return self.address("result-store")

    @property
    def coordinator_address(self) -> str:
        return self.address("coordinator")

    @property
    def redis_url(self) -> str:
        if self._cluster_wanted:
            return self._require_cluster_url()
        if self.redis is None:
            raise LocalStackError("the stack is not started: call start() first")
        return self.redis.url

    def _require_cluster_url(self) -> str:
        if self._cluster_url is not None:
            return self._cluster_url
        if self.redis_cluster is None:
            raise LocalStackError("the stack is not started: call start() first")
        return self.redis_cluster.url

    def redis_url_for(self, service: str) -> str:
        """The Redis URL of ``service``'s processes: its own ACL user when the server has them
        (``redis_url`` is then the operators' user's)."""
        if self._cluster_wanted:
            cluster = self.redis_cluster
            if cluster is not None and cluster.users is not None:
                return cluster.url_for(service)
            return self._require_cluster_url()
        redis = self._require_redis()
        return redis.url_for(service) if redis.users is not None else redis.url

    @property
    def addresses(self) -> dict[str, str]:
        return {**{name: self.address(name) for name in SERVERS}, "redis": self.redis_url}

    def client_env(self) -> dict[str, str]:
        """The variables that point a :class:`graflow.Client`, :class:`graflow.operators.Operators`
        (or the CLI) at this stack."""
        env = {
            "GRAFLOW_CLIENT_SCHEDULER_ADDRESS": self.scheduler_address,
            "GRAFLOW_CLIENT_RESULT_STORE_ADDRESS": self.result_store_address,
            "GRAFLOW_CLIENT_COORDINATOR_ADDRESS": self.coordinator_address,
        }
        token = self.token_of(Role.ADMIN)
        if token:
            env["GRAFLOW_CLIENT_AUTH_TOKEN"] = token
        if self.tls:
            env.update(self.tls.env(CLIENT_PREFIX))
        return env

    def worker_env(self) -> dict[str, str]:
        """The variables that point a worker of one's own (``graflow worker -A ...``) at this stack."""
        env = {
            "GRAFLOW_WORKER_REDIS_URL": self.redis_url_for("worker"),
            "GRAFLOW_WORKER_SCHEDULER_ADDRESS": self.scheduler_address,
            "GRAFLOW_WORKER_COORDINATOR_ADDRESS": self.coordinator_address,
            "GRAFLOW_WORKER_RESULT_STORE_ADDRESS": self.result_store_address,
            **self._layout_env(PREFIXES["worker"]),
        }
        token = self.token_of(Role.WORKER)
        if token:
            env["GRAFLOW_WORKER_AUTH_TOKEN"] = token
        if self.tls:
            env.update(self.tls.env(PREFIXES["worker"]))
        env.update(self._signing_env("worker"))
        return env

    def _layout_env(self, prefix: str) -> dict[str, str]:
        """The key layout's settings (every process of a deployment has the same)."""
        env = {f"{prefix}REDIS_CLUSTER": "true"} if self._cluster_wanted else {}
        if self.cells != 1:
            env[f"{prefix}REDIS_CELLS"] = str(self.cells)
        return env

    def _client_tls(self) -> dict[str, str]:
        return self.tls.client_files() if self.tls else {}

    def _signing_env(self, service: str) -> dict[str, str]:
        if not self.signing_key or service not in SIGNING_SERVICES:
            return {}
        prefix = PREFIXES[service]
        return {f"{prefix}SIGNING_KEYS": self.signing_key,
                f"{prefix}SIGNING_KEY_ID": self.signing_key.partition(":")[0]}

    def client(self, timeout: float = 10.0) -> Client:
        return Client(
            self.scheduler_address,
            self.result_store_address,
            auth_token=self.token_of(Role.CLIENT),
            timeout=timeout,
            **self._client_tls(),
        )

    def operators(self, timeout: float = 10.0) -> Operators:
        """The operator's API (admin token when tokens are on, as :meth:`client_env`)."""
        return Operators(
            self.coordinator_address,
            auth_token=self.token_of(Role.ADMIN),
            timeout=timeout,
            **self._client_tls(),
        )

    def metrics_url(self, name: str) -> str:
        """The ``/metrics`` URL of one process, by its name (``scheduler``, ``worker-0``...)."""
        if name not in self.metrics_ports:
            raise LocalStackError(f"no metrics port for {name!r}: start the stack with metrics=True")
        return f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"

    def _metrics_env(self, service: str, name: str) -> dict[str, str]:
        port = self.metrics_ports.get(name)
        return {f"{PREFIXES[service]}METRICS_PORT": str(port)} if port else {}

    def token_of(self, role: Role) -> str:
        """The token a caller of ``role`` sends to this stack ("" when auth is off)."""
        return self.role_tokens.get(role, "") if self.role_tokens else self.auth_token

    # ---- processes ----
    def _env(self, service: str, listen_address: str = "") -> dict[str, str]:
        prefix = PREFIXES[service]
        inherited = {
            name: value
            for name, value in os.environ.items()
            if service not in self.commands or not _is_python_path_variable(name)
        }
        env = {
            **inherited,
            **({} if service in self.commands else {"PYTHONPATH": child_pythonpath()}),
            "PYTHONUNBUFFERED": "1",
            f"{prefix}REDIS_URL": self.redis_url_for(service),
            f"{prefix}LOG_FORMAT": "json",
            f"{prefix}SHUTDOWN_GRACE_S": str(self.shutdown_grace_s),
        }
        env.update(self._layout_env(prefix))
        if service != "worker":
            env[f"{prefix}LISTEN_ADDRESS"] = listen_address
        if service in ("scheduler", "worker"):
            env[f"{prefix}RESULT_STORE_ADDRESS"] = self.result_store_address
        if service == "scheduler" and self.console_port:
            # Feedback webhooks link to this stack's console (its port may not be 8480), unless
            # the environment names another (a proxy in front of it).
            env.setdefault(f"{prefix}CONSOLE_URL", self.console_url)
        if service == "worker":
            env[f"{prefix}COORDINATOR_ADDRESS"] = self.coordinator_address
            env[f"{prefix}SCHEDULER_ADDRESS"] = self.scheduler_address
        sent = self.token_of(Role.WORKER if service == "worker" else Role.SERVICE)
        if sent:
            env[f"{prefix}AUTH_TOKEN"] = sent
        if self.role_tokens and service != "worker":
            env[f"{prefix}AUTH_TOKENS"] = ",".join(
                f"{role.value}:{token_digest(token)}" for role, token in self.role_tokens.items()
            )
        if self.tls:
            env.update(self.tls.env(prefix))
        env.update(self._signing_env(service))
        return {**env, **self._extra_env}

    def _server(self, service: str, name: str) -> ServiceProcess:
        """Replica ``name`` of ``service`` (the first one is named as the service)."""
        return ServiceProcess(
            name,
            MODULES[service],
            {**self._env(service, self.replica_address(name)), **self._metrics_env(service, name)},
            self.log_dir / f"{name}.log",
            self.replica_address(name),
            self.tls.channel_credentials() if self.tls else None,
            self.commands.get(service, ()),
        )

    def _worker(self, index: int) -> ServiceProcess:
        health = f"127.0.0.1:{free_port()}"
        env = {
            **self._env("worker"),
            "GRAFLOW_WORKER_TASK_MODULES": ",".join(self.task_modules),
            "GRAFLOW_WORKER_WORKER_ID": f"dev-worker-{index}",
            "GRAFLOW_WORKER_HEALTH_LISTEN_ADDRESS": health,
            **self._metrics_env("worker", f"worker-{index}"),
        }
        env.update({k: v for k, v in self._extra_env.items() if k.startswith("GRAFLOW_WORKER_")})
        return ServiceProcess(
            f"worker-{index}",
            MODULES["worker"],
            env,
            self.log_dir / f"worker-{index}.log",
            health,
            command=self.commands.get("worker", ()),
        )

    @property
    def console_url(self) -> str:
        """The console's URL (``console=True``), e.g. ``http://127.0.0.1:8480/``."""
        if not self.console_port:
            raise LocalStackError("this stack has no console: start it with console=True")
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.console_port}/"

    def _console(self) -> ServiceProcess:
        # Imported here: graflow.cli.devconsole builds on this module's ServiceProcess.
        from graflow.cli.devconsole import ConsoleProcess, console_env, new_session_key

        self._console_session_key = self._console_session_key or new_session_key()
        env = console_env(self.addresses, self.console_port, self.tls, self.shutdown_grace_s,
                          self._console_session_key, {**os.environ, **self._extra_env})
        return ConsoleProcess(env, self.log_dir / "console.log", self.console_port, self.tls)

    def _launch(self, processes: Sequence[ServiceProcess]) -> None:
        """Start processes together, then wait until each one is SERVING."""
        for process in processes:
            process.spawn()
        for process in processes:
            process.wait_serving(self.start_timeout_s)

    def start(self) -> LocalStack:
        if self._started:
            return self
        self._started = True
        try:
            if self._own_cluster and self.redis_cluster is None:
                passwords = generate_passwords() if self._redis_acl else None
                self.redis_cluster = LocalRedisCluster(users=passwords).start()
            elif not self._cluster_wanted and self.redis is None:
                passwords = generate_passwords() if self._redis_acl else None
                self.redis = LocalRedis(tls=self._redis_tls, users=passwords).start()
            self.servers = {
                name: self._server(service, name)
                for service, names in self.replica_names.items()
                for name in names
            }
            # Servers only need Redis to come up (they reach each other lazily, behind breakers);
            # workers register with the coordinator, so they start once it serves.
            self._launch(list(self.servers.values()))
            self.workers = [self._worker(i) for i in range(self.worker_count)]
            self._launch(self.workers)
            if self.console_port:
                self.console = self._console()
                self._launch([self.console])
        except BaseException:
            self.stop(keep_logs=True)
            raise
        return self

    def stop(self, keep_logs: bool = False) -> None:
        """Stop workers, scheduler, coordinator, result-store, then Redis (if the stack started it)."""
        grace = self.shutdown_grace_s + 5
        if self.console is not None:
            self.console.stop(grace_s=grace)
        for worker in self.workers:  # workers drain together
            worker.begin_stop()
        for worker in self.workers:
            worker.finish_stop(grace)
        for service in reversed(SERVERS):
            replicas = [self.servers[name] for name in self.replica_names[service] if name in self.servers]
            for replica in replicas:  # a service's replicas stop together
                replica.begin_stop()
            for replica in replicas:
                replica.finish_stop(grace)
        if self._own_redis and self.redis is not None:
            self.redis.close()
            self.redis = None
        if self._own_cluster and self.redis_cluster is not None:
            self.redis_cluster.close()
            self.redis_cluster = None
        if self._own_log_dir and not keep_logs:
            shutil.rmtree(self.log_dir, ignore_errors=True)
        self._started = False

    def process(self, service: str) -> ServiceProcess:
        if service in self.servers:
            return self.servers[service]
        if service == "console" and self.console is not None:
            return self.console
        if service.startswith("worker-") and service[7:].isdigit():
            index = int(service[7:])
            if index < len(self.workers):
                return self.workers[index]
        known = ", ".join([*self.servers, *(w.name for w in self.workers), "redis"])
        raise LocalStackError(f"no process named {service!r} in this stack; known: {known}")

    # ---- workers ----
    def start_worker(self, wait: bool = True, env: Mapping[str, str] | None = None) -> int:
        """Start one more worker; returns its index (its name is ``worker-<index>``). With
        ``wait=False`` it returns once the process is spawned, without waiting until it serves.
        ``env`` adds or overrides variables of this worker only (e.g. ``GRAFLOW_WORKER_QUEUES``)."""
        index = len(self.workers)
        worker = self._worker(index)
        worker.env.update(env or {})
        self.workers.append(worker)
        if wait:
            self._launch([worker])
        else:
            worker.spawn()
        return index

    def stop_worker(self, index: int, sig: signal.Signals = signal.SIGTERM) -> int | None:
        """Stop worker ``index`` with ``sig`` (killed after the grace period); returns its exit code."""
        return self.process(f"worker-{index}").stop(sig, grace_s=self.shutdown_grace_s + 5)

    def kill_worker(self, index: int) -> int | None:
        return self.stop_worker(index, signal.SIGKILL)

    # ---- chaos ----
    def kill(self, service: str) -> None:
        """SIGKILL a process (``redis`` included); :meth:`restart` brings it back."""
        if service == "redis":
            self._require_redis().stop(kill=True)
        else:
            self.process(service).stop(signal.SIGKILL)

    def restart(self, service: str, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop a process with ``sig`` (if it runs) and start it again on the same address."""
        if service == "redis":
            self._require_redis().restart(kill=sig == signal.SIGKILL)
            return
        process = self.process(service)
        process.stop(sig, grace_s=self.shutdown_grace_s + 5)
        self._launch([process])

    def pause(self, service: str) -> None:
        """SIGSTOP a process: it holds its sockets but answers nothing until :meth:`resume`."""
        self._pid_signal(service, signal.SIGSTOP)

    def resume(self, service: str) -> None:
        self._pid_signal(service, signal.SIGCONT)

    def _pid_signal(self, service: str, sig: signal.Signals) -> None:
        if service == "redis":
            process = self._require_redis().process
            if process is None:
                raise LocalStackError("redis is not running")
            process.send_signal(sig)
        else:
            self.process(service).send(sig)

    def _require_redis(self) -> LocalRedis:
        if self._cluster_wanted:
            raise LocalStackError(
                "this stack runs on a Redis Cluster: act on its nodes with stack.redis_cluster"
            )
        if self.redis is None:
            raise LocalStackError("the stack is not started: call start() first")
        return self.redis

    def log_path(self, service: str) -> Path:
        if service == "redis":
            return self._require_redis().directory / "redis.log"
        return self.process(service).log_path

    def log_tail(self, service: str, lines: int = 40) -> str:
        return read_tail(self.log_path(service), lines)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop_at_exit(ref: weakref.ReferenceType[LocalStack]) -> None:
    """Never leave children behind when the interpreter exits without calling stop()."""
    stack = ref()
    if stack is not None and stack._started:
        with contextlib.suppress(Exception):
            stack.stop(keep_logs=True)
