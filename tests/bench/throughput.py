"""Benchmark: one-task latency and fan-out throughput, beside raw Redis Streams baselines.

    ./pants run tests/bench/throughput.py -- [--fanout 10000] [--latency-runs 200] [--workers 2]
        [--concurrency N]

Starts a private redis-server and the four services as processes (2 workers by default, each
with the worker's default ``GRAFLOW_WORKER_CONCURRENCY`` unless ``--concurrency`` is given), then
measures, in the same run so the machine's noise hits both sides alike:

- baseline latency: one message's round trip through two Redis streams with XREADGROUP BLOCK
  (what a task's "dispatch, then report back" costs with nothing else in the way);
- Graflow latency: a one-task workflow from SubmitRun to its result in the client (median, p99);
- baseline throughput: pipelined XADD of N entries, XREADGROUP COUNT 100 + XACK per batch;
- Graflow throughput: a fan-out of N tasks into one join, tasks per second from submit to result;
- the cost of each Graflow measure: Redis commands (``INFO commandstats``) and CPU time summed over
  every process of the stack, Redis included (``/proc/<pid>/stat``, ``INFO cpu``), per run of the
  one-task workflow and per task of the fan-out. Unlike wall-clock figures these barely move with
  the machine's noise, so they show a change's cost where the latency cannot.

``--json PATH`` also writes the figures as JSON, so runs can be compared.

Targets (issue #2): 10,000-task fan-out at >= 5,000 tasks/s, one-task submit-to-result <= 3 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time

import redis

from graflow import parallel, workflow
from graflow.devstack import LocalStack
from graflow_runtime.local_redis import LocalRedis
from tests.bench.tasks import ping, start, total, unit


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def baseline_latency_ms(url: str, runs: int) -> list[float]:
    """Round trip request -> consumer group -> reply stream, like dispatch + outcome."""
    conn = redis.Redis.from_url(url)
    conn.delete("bench:req", "bench:rep")
    conn.xgroup_create("bench:req", "g", id="0", mkstream=True)
    stop = threading.Event()

    def responder() -> None:
        peer = redis.Redis.from_url(url)
        while not stop.is_set():
            batch = peer.xreadgroup("g", "c", {"bench:req": ">"}, count=10, block=200)
            for _stream, entries in batch or []:
                pipe = peer.pipeline(transaction=True)
                for entry_id, fields in entries:
                    pipe.xadd("bench:rep", fields)
                    pipe.xack("bench:req", "g", entry_id)
                pipe.execute()
        peer.close()

    thread = threading.Thread(target=responder, daemon=True)
    thread.start()
    last = "$"
    samples = []
    for i in range(runs):
        began = time.perf_counter()
        conn.xadd("bench:req", {"i": i})
        reply = conn.xread({"bench:rep": last}, block=5000, count=1)
        samples.append((time.perf_counter() - began) * 1000)
        last = reply[0][1][-1][0]
    stop.set()
    thread.join()
    conn.close()
    return samples


def baseline_throughput(url: str, n: int) -> float:
    conn = redis.Redis.from_url(url)
    conn.delete("bench:tp")
    conn.xgroup_create("bench:tp", "g", id="0", mkstream=True)
    began = time.perf_counter()
    for offset in range(0, n, 100):
        pipe = conn.pipeline(transaction=False)
        for i in range(offset, min(n, offset + 100)):
            pipe.xadd("bench:tp", {"i": i})
        pipe.execute()
    done = 0
    while done < n:
        batch = conn.xreadgroup("g", "c", {"bench:tp": ">"}, count=100, block=1000)
        ids = [entry_id for _s, entries in batch for entry_id, _f in entries]
        conn.xack("bench:tp", "g", *ids)
        done += len(ids)
    elapsed = time.perf_counter() - began
    conn.close()
    return n / elapsed


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process, all its threads (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Cost:
    """Redis commands and CPU seconds spent by a stack between ``start()`` and ``stop()``."""

    def __init__(self, stack: LocalStack) -> None:
        self.redis = redis.Redis.from_url(stack.redis_url)
        self.pids = [p.pid for p in [*stack.servers.values(), *stack.workers] if p.pid]

    def _sample(self) -> tuple[int, float]:
        stats = self.redis.info("commandstats")
        calls = sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")
        cpu = self.redis.info("cpu")
        redis_cpu = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
        return calls, redis_cpu + sum(process_cpu_s(pid) for pid in self.pids)

    def start(self) -> None:
        self._begin = self._sample()

    def stop(self, units: int) -> dict[str, float]:
        calls, cpu = self._sample()
        return {
            "redis_commands": (calls - self._begin[0]) / units,
            "cpu_us": (cpu - self._begin[1]) * 1e6 / units,
        }


def graflow_latency_ms(stack: LocalStack, runs: int) -> list[float]:
    with workflow("ping") as wf:
        wf.add(ping)
    spec = wf.spec()
    samples = []
    with stack.client() as client:
        for _ in range(10):  # warm up connections and caches
            client.submit(spec).result(timeout=30)
        for _ in range(runs):
            began = time.perf_counter()
            value = client.submit(spec).result(timeout=30)
            samples.append((time.perf_counter() - began) * 1000)
            assert value == "pong"
    return samples


def graflow_fanout(stack: LocalStack, n: int) -> tuple[float, float]:
    with workflow("fanout") as wf:
        start >> parallel(*[unit(task_id=f"u{i}", i=i) for i in range(n)]) >> total
    spec = wf.spec()
    with stack.client(timeout=120) as client:
        began = time.perf_counter()
        value = client.submit(spec).result(timeout=600)
        elapsed = time.perf_counter() - began
    assert value == sum(range(n)), value
    return (n + 2) / elapsed, elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fanout", type=int, default=10_000)
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=None,
                        help="GRAFLOW_WORKER_CONCURRENCY of each worker (default: the worker's default)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args(argv)
    out = sys.stdout.write

    with LocalRedis() as baseline_redis:
        base_lat = baseline_latency_ms(baseline_redis.url, args.latency_runs)
        base_tp = baseline_throughput(baseline_redis.url, args.fanout)

    server = LocalRedis().start()
    env = {} if args.concurrency is None else {"GRAFLOW_WORKER_CONCURRENCY": str(args.concurrency)}
    stack = LocalStack(workers=args.workers, task_modules=["tests.bench.tasks"], redis=server, env=env)
    try:
        stack.start()
        cost = Cost(stack)
        cost.start()
        lat = graflow_latency_ms(stack, args.latency_runs)
        lat_cost = cost.stop(args.latency_runs + 10)  # the warm-up runs count too
        cost.start()
        tp, elapsed = graflow_fanout(stack, args.fanout)
        fan_cost = cost.stop(args.fanout + 2)
    finally:
        stack.stop()
        server.close()

    concurrency = "default" if args.concurrency is None else args.concurrency
    out(f"\nGraflow benchmark ({args.workers} workers, concurrency {concurrency}, "
        f"{args.latency_runs} latency runs, fan-out {args.fanout})\n")
    out(f"{'measure':<44}{'baseline':>14}{'graflow':>14}{'ratio':>9}\n")
    out(f"{'one-task submit->result p50 (ms)':<44}{statistics.median(base_lat):>14.3f}"
        f"{statistics.median(lat):>14.3f}{statistics.median(lat) / statistics.median(base_lat):>9.1f}\n")
    out(f"{'one-task submit->result p99 (ms)':<44}{percentile(base_lat, 0.99):>14.3f}"
        f"{percentile(lat, 0.99):>14.3f}{percentile(lat, 0.99) / percentile(base_lat, 0.99):>9.1f}\n")
    out(f"{'fan-out throughput (tasks/s)':<44}{base_tp:>14.0f}{tp:>14.0f}{base_tp / tp:>9.1f}\n")
    out(f"{'one-task run: Redis commands / CPU us (all)':<44}{'':>14}"
        f"{lat_cost['redis_commands']:>14.1f}{lat_cost['cpu_us']:>9.0f}\n")
    out(f"{'fan-out task: Redis commands / CPU us (all)':<44}{'':>14}"
        f"{fan_cost['redis_commands']:>14.2f}{fan_cost['cpu_us']:>9.0f}\n")
    out(f"\nfan-out of {args.fanout} tasks took {elapsed:.2f}s; targets: p50 <= 3 ms, >= 5000 tasks/s\n")
    out("baseline latency: XADD -> XREADGROUP BLOCK -> XADD reply + XACK -> XREAD BLOCK "
        "(one Redis, two streams)\n")
    out("baseline throughput: pipelined XADD x100, XREADGROUP COUNT 100 + XACK per batch\n")
    if args.json:
        figures = {
            "workers": args.workers, "concurrency": concurrency,
            "latency_runs": args.latency_runs, "fanout": args.fanout,
            "baseline": {"p50_ms": statistics.median(base_lat), "p99_ms": percentile(base_lat, 0.99),
                         "tasks_per_s": base_tp},
            "graflow": {"p50_ms": statistics.median(lat), "p99_ms": percentile(lat, 0.99),
                        "tasks_per_s": tp, "one_task_run": lat_cost, "fanout_task": fan_cost},
        }
        with open(args.json, "w") as sink:
            json.dump(figures, sink, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
