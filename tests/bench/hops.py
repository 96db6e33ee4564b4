"""Per-hop counts: gRPC calls, Redis round trips and Redis commands, per process, per task.

A stack of its own (counting slows it down, so nothing here is timed) runs a few one-task runs,
a chain of no-ops, then one fan-out, and this module counts, in each window:

- **gRPC calls**, from the services' own OpenTelemetry spans (``<PREFIX>TRACES_EXPORTER=console``:
  one CLIENT span per call a service makes, one SERVER span per call it serves, written to its log).
  A call is a SERVER span; its caller is the service whose CLIENT span is its parent, else the
  benchmark's client (not traced).
- **Redis commands and round trips**, from ``MONITOR``: each command names the client connection,
  whose local port belongs to one process (``/proc/<pid>/fd`` and ``/proc/net/tcp``); commands that
  Lua scripts run show as ``lua`` right after the script's call and are counted as the caller's
  "in scripts". ``EVALSHA`` is named by its script: ``SCRIPT FLUSH`` before the warm-up makes every
  service load its scripts again in view of ``MONITOR``, and each body is matched to the ``.lua``
  file of the service packages whose first line occurs last in it (the scheduler prepends its helper
  files). A round trip is a run of consecutive commands of one connection less than ``GAP_S``
  apart (a pipeline, executed in one go); :attr:`Counts.reads` (``total_reads_processed``) checks
  the sum.

Each command (a script's included) is also counted by the pattern of the first ``gf:`` key it names
(``memory.pattern_of``: run ids folded into ``{R}``) and its process, which shows the traffic on
keys outside the run-scoped layout (``gf:queues``, the worker registry, ``gf:audit``), and each
command a client sent by the bytes of its request (RESP-encoded arguments).

Background traffic (heartbeats, blocking reads that time out, trims) is counted the same way over
an idle window and reported per second, so it can be told from the per-task figures.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import reduce
from pathlib import Path

import redis

from graflow import parallel, workflow
from graflow.devstack import LocalStack
from tests.bench.memory import pattern_of
from tests.bench.tasks import noop, ping, start, total, unit

GAP_S = 100e-6
SERVICE_PACKAGES = ("graflow_scheduler", "graflow_coordinator", "graflow_result_store", "graflow_worker")
# Packages whose .lua files name the scripts seen (dispatch.lua is graflow_runtime's since issue 13).
SCRIPT_PACKAGES = (*SERVICE_PACKAGES, "graflow_runtime")
# gRPC service of a method -> the process serving it.
SERVERS = {"Scheduler": "scheduler", "Coordinator": "coordinator", "ResultStore": "result-store"}
TRACED = {f"GRAFLOW_{name}_TRACES_EXPORTER": "console"
          for name in ("SCHEDULER", "COORDINATOR", "RESULT_STORE", "WORKER")}
TOKEN = re.compile(rb'"((?:[^"\\]|\\.)*)"')
LINE = re.compile(rb"^(\d+\.\d+) \[\d+ ([^\]]*)\] (.*)$")
STOP = b"bench:monitor:stop"


REPLICA = re.compile(r"-\d+$")


def process_of(name: str) -> str:
    """``worker-1`` -> ``worker``, ``scheduler-1`` -> ``scheduler``: the processes of a service
    (its workers, its replicas) are counted together."""
    return REPLICA.sub("", name)


# ---- who owns a connection ----
def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def port_owners(pids: Mapping[str, int]) -> dict[int, str]:
    """Local TCP port -> process name, for every open TCP socket of ``pids``."""
    owner_of_inode = {inode: name for name, pid in pids.items() for inode in socket_inodes(pid)}
    owners = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            inode = int(fields[9])
            if inode in owner_of_inode:
                owners[int(fields[1].rsplit(":", 1)[1], 16)] = owner_of_inode[inode]
    return owners


def socket_bytes(server_port: int, owners: Mapping[int, str]) -> Counter[tuple[str, str]]:
    """Bytes each process sent to (``"in"``) and received from (``"out"``) the server listening on
    ``server_port``, since its connections opened: the server side's TCP counters (``ss -ti``),
    each connection's peer port mapped to its process by ``owners`` (:func:`port_owners`)."""
    listing = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{server_port} )"],
                             capture_output=True, text=True, check=True).stdout
    totals: Counter[tuple[str, str]] = Counter()
    peer = None
    for line in listing.splitlines():
        if not line.startswith(("\t", " ")):
            peer = int(line.split()[-1].rsplit(":", 1)[1])
            continue
        process = process_of(owners.get(peer, "other")) if peer is not None else "other"
        fields = dict(item.split(":", 1) for item in line.split() if item.startswith("bytes_"))
        totals[(process, "in")] += int(fields.get("bytes_received", 0))
        totals[(process, "out")] += int(fields.get("bytes_sent", 0))
    return totals


# ---- MONITOR ----
@dataclass
class Command:
    at: float
    client: str  # "host:port", or "lua" for a command a script ran
    args: list[bytes]


def unescape(token: bytes) -> bytes:
    """One argument as MONITOR prints it (``sdscatrepr``: ``\\n``, ``\\"``, ``\\xNN``...) -> its bytes."""
    return codecs.decode(token.decode("ascii"), "unicode_escape").encode("latin-1")


class Monitor:
    """Every command Redis runs, from ``start()`` to ``stop()`` (a thread reading ``MONITOR``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.commands: list[Command] = []
        self._conn = redis.Redis.from_url(url)
        self._monitor = self._conn.monitor()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def start(self) -> None:
        self._monitor.__enter__()
        self._thread.start()

    def _read(self) -> None:
        connection = self._monitor.connection
        while True:
            line = connection.read_response(disable_decoding=True)
            match = LINE.match(line)
            if match is None:
                continue
            args = [unescape(token) for token in TOKEN.findall(match[3])]
            if args[:2] == [b"ECHO", STOP]:
                return
            self.commands.append(Command(float(match[1]), match[2].decode(), args))

    def stop(self) -> None:
        self._conn.echo(STOP)
        self._thread.join(timeout=30)
        self._monitor.__exit__()
        self._conn.close()


def lua_files() -> dict[bytes, str]:
    """First line of each ``.lua`` file of the script packages -> ``<package>/<file>``."""
    firsts = {}
    for package in SCRIPT_PACKAGES:
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            for path in Path(location).rglob("*.lua"):
                first = path.read_bytes().split(b"\n", 1)[0]
                firsts[first] = f"{package}/{path.relative_to(location)}"
    return firsts


def script_names(commands: list[Command]) -> dict[bytes, str]:
    """SHA1 (hex, as ``EVALSHA`` sends it) -> script name, for every ``SCRIPT LOAD`` seen."""
    firsts = lua_files()
    names = {}
    for command in commands:
        if [a.upper() for a in command.args[:2]] != [b"SCRIPT", b"LOAD"]:
            continue
        body = command.args[2]
        sha = hashlib.sha1(body).hexdigest().encode()
        found = [(body.rfind(first), name) for first, name in firsts.items() if first and first in body]
        names[sha] = max(found)[1].rsplit("/", 1)[-1] if found else f"script {sha[:8].decode()}"
    return names


# ---- counting ----
@dataclass
class Counts:
    """What one window cost, per process (workers together)."""

    grpc: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (caller, callee, method)
    round_trips: Counter[str] = field(default_factory=Counter)
    commands: Counter[str] = field(default_factory=Counter)  # sent by the process
    in_scripts: Counter[str] = field(default_factory=Counter)  # run by its scripts
    script_commands: Counter[tuple[str, str]] = field(default_factory=Counter)  # (script, command)
    by_command: Counter[tuple[str, str]] = field(default_factory=Counter)  # (process, command or script)
    by_key: Counter[tuple[str, str]] = field(default_factory=Counter)  # (process, first gf: key's pattern)
    request_bytes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (process, command or script)
    reads: int = 0  # Redis's total_reads_processed over the window (a check of the round trips)

    def per(self, units: float) -> dict[str, object]:
        def scaled(counter: Counter) -> dict[str, float]:
            return {" ".join(key) if isinstance(key, tuple) else key: round(value / units, 3)
                    for key, value in sorted(counter.items(), key=lambda kv: -kv[1])}

        return {
            "grpc_calls": scaled(Counter({(f"{c}->{s}", m): n for (c, s, m), n in self.grpc.items()})),
            "redis_round_trips": scaled(self.round_trips),
            "redis_commands": scaled(self.commands),
            "redis_commands_in_scripts": scaled(self.in_scripts),
            "redis_script_commands": scaled(self.script_commands),
            "redis_by_command": scaled(self.by_command),
            "redis_by_key": scaled(self.by_key),
            "redis_request_bytes": scaled(self.request_bytes),
            "redis_reads_processed": round(self.reads / units, 3),
        }


def key_pattern(args: list[bytes]) -> str:
    """The pattern of the first ``gf:`` key among a command's arguments, ``-`` when none."""
    for arg in args[1:]:
        if arg.startswith(b"gf:"):
            return pattern_of(arg.decode(errors="replace"))
    return "-"


def resp_size(args: list[bytes]) -> int:
    """Bytes of a command's request in RESP (an array of bulk strings)."""
    return len(f"*{len(args)}\r\n") + sum(len(f"${len(a)}\r\n") + len(a) + 2 for a in args)


def count_redis(commands: list[Command], owners: Mapping[int, str], scripts: Mapping[bytes, str],
                counts: Counts) -> None:
    caller = None
    script = ""  # the script the lua lines belong to
    last: Command | None = None  # the last command, a script's included
    last_client = None  # the connection of the last command sent by a client
    blocked: set[str] = set()  # connections whose last command was a blocking read
    for command in commands:
        if command.client == "lua":
            if caller is not None:
                counts.by_key[(caller, key_pattern(command.args))] += 1
                counts.in_scripts[caller] += 1
                counts.script_commands[(script, command.args[0].upper().decode())] += 1
            last = command
            continue
        port = int(command.client.rsplit(":", 1)[1]) if ":" in command.client else -1
        caller = process_of(owners.get(port, "other"))
        name = command.args[0].upper().decode() if command.args else "?"
        if name == "EVALSHA" and len(command.args) > 1:
            name = scripts.get(command.args[1], f"script {command.args[1][:8].decode()}")
        counts.commands[caller] += 1
        counts.by_key[(caller, key_pattern(command.args))] += 1
        counts.by_command[(caller, name)] += 1
        counts.request_bytes[(caller, name)] += resp_size(command.args)
        script = name
        close = last is not None and command.at - last.at < GAP_S
        # A pipeline's commands run back to back; the ones after a blocking read run as soon as the
        # read is served, i.e. right after the command that served it, whichever client sent that.
        if not (close and (last_client == command.client or command.client in blocked)):
            counts.round_trips[caller] += 1
        blocked.discard(command.client)
        if b"BLOCK" in (a.upper() for a in command.args):
            blocked.add(command.client)
        last, last_client = command, command.client


def spans(log: Path) -> list[dict]:
    """The OpenTelemetry spans a service's ConsoleSpanExporter wrote into its log (indented JSON
    objects between the one-line JSON log records)."""
    found, block = [], None
    for line in log.read_text(errors="replace").splitlines():
        if block is None and line == "{":
            block = [line]
        elif block is not None:
            block.append(line)
            if line == "}":
                found.append(json.loads("\n".join(block)))
                block = None
    return found


def count_grpc(stack_spans: Mapping[str, list[dict]], window: tuple[float, float], counts: Counts) -> None:
    """One call per SERVER span that started in ``window``; its caller is the process whose CLIENT
    span is the server span's parent, else the benchmark's client (not traced)."""
    callers = {span["context"]["span_id"]: process for process, items in stack_spans.items()
               for span in items if span["kind"] == "SpanKind.CLIENT"}
    for process, items in stack_spans.items():
        for span in items:
            if span["kind"] != "SpanKind.SERVER":
                continue
            at = datetime.fromisoformat(span["start_time"].replace("Z", "+00:00")).timestamp()
            service, _, method = span["name"].lstrip("/").partition("/")
            if SERVERS.get(service.rsplit(".", 1)[-1]) == process and window[0] <= at < window[1]:
                counts.grpc[(callers.get(span.get("parent_id"), "client"), process, method)] += 1


# ---- the pass ----
def measure_hops(workers: int, env: Mapping[str, str], latency_runs: int = 20, chain_steps: int = 20,
                 fanout: int = 1_000, idle_s: float = 2.0) -> dict[str, object]:
    """Counts per one-task run, per chain step, per fan-out task, and background per second (see the
    module)."""
    stack = LocalStack(workers=workers, task_modules=["tests.bench.tasks"], env={**env, **TRACED})
    windows: dict[str, tuple[float, float]] = {}
    reads: dict[str, int] = {}
    try:
        stack.start()
        pids = {p.name: p.pid for p in [*stack.servers.values(), *stack.workers] if p.pid}
        bus = redis.Redis.from_url(stack.redis_url)
        monitor = Monitor(stack.redis_url)
        monitor.start()
        bus.script_flush()
        with workflow("ping") as wf:
            wf.add(ping)
        with workflow("chain") as chain:
            reduce(lambda left, right: left >> right, [noop(task_id=f"a{i}") for i in range(chain_steps)])
        with workflow("fanout") as fan:
            start >> parallel(*[unit(task_id=f"u{i}", i=i) for i in range(fanout)]) >> total
        with stack.client(timeout=120) as client:
            for _ in range(5):  # warm-up: scripts loaded again, graphs stored, connections open
                client.submit(wf).result(timeout=30)
            client.submit(chain).result(timeout=60)
            client.submit(fan).result(timeout=600)

            def window(name: str, action: Callable[[], object]) -> None:
                began_reads = int(bus.info("stats")["total_reads_processed"])
                began = time.time()
                action()
                windows[name] = (began, time.time())
                # minus the INFO that read the figure
                reads[name] = int(bus.info("stats")["total_reads_processed"]) - began_reads - 1

            def one_task_runs() -> None:
                for _ in range(latency_runs):
                    client.submit(wf).result(timeout=30)

            window("idle", lambda: time.sleep(idle_s))
            window("one_task", one_task_runs)
            window("chain", lambda: client.submit(chain).result(timeout=60))
            window("fanout", lambda: client.submit(fan).result(timeout=600))
        owners = port_owners(pids)
        monitor.stop()
        bus.close()
    finally:
        stack.stop(keep_logs=True)
    stack_spans: dict[str, list[dict]] = {process_of(p): [] for p in pids}
    for name in pids:
        stack_spans[process_of(name)].extend(spans(stack.log_path(name)))
    shutil.rmtree(stack.log_dir, ignore_errors=True)
    scripts = script_names(monitor.commands)
    units = {"idle": None, "one_task": latency_runs, "chain": chain_steps, "fanout": fanout + 2}
    result: dict[str, object] = {}
    for name, (began, ended) in windows.items():
        counts = Counts(reads=reads[name])
        count_redis([c for c in monitor.commands if began <= c.at < ended], owners, scripts, counts)
        count_grpc(stack_spans, (began, ended), counts)
        result[name] = counts.per(units[name] or (ended - began))
    result["units"] = {"idle": "per second", "one_task": "per run", "chain": "per step", "fanout": "per task"}
    return result
