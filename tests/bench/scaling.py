"""How far Graflow scales: the capacity model of docs/scaling.md from this machine's measurements,
and the model's predictions beside what this machine measures (issue 10, section 3).

    ./pants run tests/bench/scaling.py -- [--fanout 5000] [--runs 1000] [--threads 8]
        [--workers 2] [--cores 2] [--no-hops] [--idle-seconds 25] [--cells 12] [--no-deployments]
        [--profile DIR [--py-spy PATH]] [--json PATH]

1. **Costs**, on a stack of its own (a private redis-server, the default layout, one process per
   service, ``--workers`` workers), each measure saturating it:
   - ``fanout``: ``start >> parallel(N units) >> total``, N = ``--fanout``: per task;
   - ``runs``: ``--runs`` one-task runs submitted at once from ``--threads`` client threads
     (``measures.many_runs`` with one step): per run.
   For each: CPU per process (``cost.py``: ``/proc``, Redis' ``INFO cpu``), Redis commands, round
   trips, bytes in and out, Redis time by command (``INFO commandstats``), and Redis bytes per
   process (``hops.socket_bytes``: the TCP counters of each Redis connection). The hops pass
   (``hops.py``, ``MONITOR``, on another stack; ``--no-hops`` skips it) adds commands per process
   and per script, request bytes, and commands by key pattern: the traffic on the keys outside the
   cells (worker registry, ``gf:queues``, ``gf:audit``, graphs). ``--profile DIR`` records every
   process with py-spy during both measures (``profiling.py``) and prints where each spends it.
2. **A Redis core's capacity**: ``redis-benchmark`` against a private redis-server (single-key
   ``HSET`` one command a round trip, and pipelined by 32), beside the shard capacity the model
   uses: one core over Redis' own CPU per task.
3. **The model**: tasks (runs) per second of one Redis shard and of one replica of each service
   (one core over the process's CPU per task; a Python service is bound to one core by its event
   loop and the GIL), the resources needed at 10x, 100x and 1000x today's load (the fan-out
   tasks/s and the runs/s one stack reaches here), and the rates on the single keys outside the
   cells at those loads.
4. **The check**: the model predicts a deployment's throughput as the least of: the machine's cores
   over the CPU a task costs all processes (the benchmark's client included), the shards' capacity
   and each service's replicas' capacity. It measures the same two measures on (a0) one Redis with
   the cluster's layout, ``--cells`` hash-tagged cells, on (a) the 3-primary local cluster
   (``LocalStack(redis_cluster=True, cells=...)``: 3 primaries and 3 replicas, every node's CPU and
   commands summed) with those cells, and on (b) a stack with 2 replicas of each server
   (``LocalStack(replicas=...)``), and prints each deployment's prediction (from the one stack's
   costs), measurement, and CPU per unit.
   On this 2-core machine the cores bind, so the model predicts about the same throughput whatever
   the shards and replicas: the measured ratio shows overhead, not scale. ``--no-deployments``
   measures one stack.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from graflow.devstack import SERVERS, LocalStack
from graflow_runtime import keys
from graflow_runtime.local_redis import LocalRedis
from tests.bench import profiling
from tests.bench.cost import CLIENT, REDIS, Cost
from tests.bench.hops import measure_hops, port_owners, process_of, socket_bytes
from tests.bench.measures import Sizes, fanout, many_runs
from tests.bench.memory import pattern_of

FACTORS = (10, 100, 1000)
MEASURES = ("fanout", "runs")
TASK_MODULES = ["tests.bench.tasks"]
SERVICES = ("scheduler", "coordinator", "result-store", "worker")
# Keys outside the cells: one key (one slot) whatever the number of cells. Graphs are one key per
# workflow graph (hash), so one hot workflow is one hot key.
SINGLE_KEYS = {
    pattern_of(keys.WORKERS_INDEX): "worker registry index",
    pattern_of(keys.worker_info("w")): "a worker's info hash",
    pattern_of(keys.QUEUES): "queue names",
    pattern_of(keys.AUDIT_STREAM): "audit stream",
    pattern_of(keys.graph("h")): "a graph (per workflow)",
    pattern_of(keys.LAYOUT_KEY): "layout",
}
# Share of a resource's capacity at which the model calls it the bottleneck's neighbourhood.
BUSY = 0.5
# Cells per Redis primary the model assumes (architecture.md: REDIS_CELLS 12 for 3 primaries).
CELLS_PER_SHARD = 4


# ---- measuring ----
def redis_nodes(stack: LocalStack) -> list[str]:
    """The URLs of the stack's Redis servers: its one, or every node of its local cluster."""
    return stack.redis_cluster.urls if stack.redis_cluster is not None else [stack.redis_url]


def measure_costs(stack: LocalStack, sizes: Sizes, profiler: profiling.Profiler | None) -> dict[str, dict]:
    """Per fan-out task and per one-task run (see the module): throughput, costs, bytes by process,
    on ``stack`` (started here, stopped at the end)."""
    out: dict[str, dict] = {}
    try:
        stack.start()
        pids = {p.name: p.pid for p in [*stack.servers.values(), *stack.workers] if p.pid}
        nodes = redis_nodes(stack)
        ports = [urlsplit(url).port for url in nodes]
        cost = Cost(nodes, pids)

        def traffic(owners: Mapping[int, str]) -> Counter[tuple[str, str]]:
            return sum((socket_bytes(port, owners) for port in ports if port), Counter())

        for name, measure, rate in (("fanout", fanout, "tasks_per_s"), ("runs", many_runs, "runs_per_s")):
            owners = port_owners(pids)
            before = traffic(owners)
            cost.start()
            with profiling.recording(profiler, name, pids):
                outcome = measure(stack, sizes)
            units = outcome.tasks
            figures = cost.stop(units)
            moved = traffic(port_owners(pids) | owners)
            moved.subtract(before)
            out[name] = {"per_s": outcome.figures[rate], "units": units, **figures,
                         "redis_bytes_by_process": {f"{p} {d}": n / units
                                                    for (p, d), n in moved.items() if n}}
        cost.close()
    finally:
        stack.stop()
    return out


def redis_benchmark(requests: int = 100_000) -> dict[str, float]:
    """A private redis-server's commands/s under ``redis-benchmark`` (50 clients): single-key ``HSET``
    one command a round trip (``round_trip_per_s``) and pipelined by 32 (``pipelined_per_s``)."""
    out = {}
    with LocalRedis() as server:
        for label, pipeline in (("round_trip_per_s", 1), ("pipelined_per_s", 32)):
            listing = subprocess.run(
                ["redis-benchmark", "-h", "127.0.0.1", "-p", str(server.port), "-q", "--csv", "-c", "50",
                 "-n", str(requests * pipeline), "-P", str(pipeline), "-t", "hset"],
                capture_output=True, text=True, check=True).stdout
            rows = list(csv.DictReader(listing.splitlines()))
            out[label] = float(rows[0]["rps"])
    return out


# ---- the model ----
def service_cpu(figures: Mapping[str, object]) -> dict[str, float]:
    """CPU us per unit of each service (the workers summed: a worker replica is one process, and
    the work spreads over them), of Redis, and of the benchmark's client."""
    by = Counter()
    for name, us in figures["cpu_us_by_process"].items():
        by[process_of(name)] += us
    return dict(by)


def capacity(figures: Mapping[str, object]) -> dict[str, float]:
    """Units per second one core gives: a Redis shard, a replica of each service, a worker process
    (a unit's worker CPU is spent in one worker, so the workers' sum is one worker's cost)."""
    return {name: 1e6 / us for name, us in service_cpu(figures).items() if name != CLIENT and us > 0}


def predict(figures: Mapping[str, object], cores: float, shards: int = 1, replicas: int = 1,
            workers: int = 2) -> tuple[float, str]:
    """Units/s of a deployment by the model, and what binds: the least of the machine's cores over
    the CPU a unit costs every process (the client's included), the shards' capacity and each
    service's replicas' capacity (``workers`` worker processes)."""
    caps = capacity(figures)
    limits = {f"{cores:g} cores (all processes' CPU)": cores * 1e6 / sum(service_cpu(figures).values()),
              f"Redis x{shards}": shards * caps[REDIS]}
    for name in SERVICES:
        if name in caps:
            count = workers if name == "worker" else replicas
            limits[f"{name} x{count}"] = caps[name] * count
    binding = min(limits, key=lambda label: limits[label])
    return limits[binding], binding


def needs(figures: Mapping[str, object], load: float) -> dict[str, int]:
    """Redis shards and replicas of each service (worker processes) a load (units/s) needs."""
    caps = capacity(figures)
    out = {"Redis shards": math.ceil(load / caps[REDIS])}
    for name in SERVICES:
        if name in caps:
            out[f"{name} replicas"] = math.ceil(load / caps[name])
    return out


# ---- printing ----
def costs_table(costs: Mapping[str, dict]) -> str:
    lines = [f"{'per fan-out task / per one-task run':<46}{'fanout':>14}{'runs':>14}"]

    def row(label: str, get, digits: int = 1) -> None:
        lines.append(f"  {label:<44}" + "".join(f"{get(costs[m]):>14,.{digits}f}" for m in MEASURES))

    row("throughput (tasks/s, runs/s)", lambda f: f["per_s"], 0)
    row("Redis commands", lambda f: f["redis_commands"], 2)
    row("Redis round trips", lambda f: f["redis_round_trips"], 2)
    row("Redis bytes in (clients -> Redis)", lambda f: f["redis_bytes_in"], 0)
    row("Redis bytes out (Redis -> clients)", lambda f: f["redis_bytes_out"], 0)
    lines.append("  CPU us, per process (workers summed)")
    names = sorted({n for m in costs.values() for n in service_cpu(m)}, key=lambda n: (n == CLIENT, n))
    for name in names:
        row(f"  {name}", lambda f, n=name: service_cpu(f).get(n, 0.0), 0)
    row("  all but the client", lambda f: f["cpu_us"], 0)
    lines.append("  Redis bytes by process (in: sent to Redis, out: received)")
    pairs = sorted({k for m in costs.values() for k in m["redis_bytes_by_process"]})
    for pair in pairs:
        row(f"  {pair}", lambda f, k=pair: f["redis_bytes_by_process"].get(k, 0.0), 0)
    lines.append("  Redis calls (usec) by command: INFO commandstats")
    commands = sorted({c for m in costs.values() for c in m["redis_calls_by_command"]},
                      key=lambda c: -costs["fanout"]["redis_usec_by_command"].get(c, 0))
    for command in commands:
        lines.append(f"    {command:<42}" + "".join(
            f"{costs[m]['redis_calls_by_command'].get(command, 0):>7.2f}"
            f" ({costs[m]['redis_usec_by_command'].get(command, 0):>4.1f})" for m in MEASURES))
    return "\n".join(lines) + "\n"


def hops_lines(hops: Mapping[str, dict]) -> str:
    windows = ("one_task", "fanout", "idle")
    lines = [f"{'hops (MONITOR pass)':<58}" + "".join(f"{hops['units'][w]:>12}" for w in windows)]
    for title, key in (
        ("Redis commands by process and command (EVALSHA named by script)", "redis_by_command"),
        ("Request bytes by process and command", "redis_request_bytes"),
        ("Redis commands by process and key pattern (first gf: key; scripts' included)", "redis_by_key"),
    ):
        lines.append(title)
        names = sorted({k for w in windows for k in hops[w][key]},
                       key=lambda k: -hops["fanout"][key].get(k, 0))
        for name in names:
            lines.append(f"  {name:<56}" + "".join(f"{hops[w][key].get(name, 0):>12.3f}" for w in windows))
    return "\n".join(lines) + "\n"


def model_lines(costs: Mapping[str, dict], bench: Mapping[str, float], hops: Mapping[str, dict],
                workers: int) -> str:
    lines = []
    for measure, unit in (("fanout", "tasks/s"), ("runs", "runs/s")):
        figures = costs[measure]
        caps = capacity(figures)
        lines.append(f"Capacity per core, {unit} ({measure}): "
                     + ", ".join(f"{name} {cap:,.0f}" for name, cap in sorted(caps.items())))
        redis_us = service_cpu(figures)[REDIS]
        by_round_trips = bench["round_trip_per_s"] / figures["redis_round_trips"]
        by_commands = bench["pipelined_per_s"] / figures["redis_commands"]
        lines.append(f"  one Redis shard: {caps[REDIS]:,.0f} {unit} (1 core / {redis_us:.0f} us"
                     " of Redis CPU);"
                     f" by redis-benchmark's {bench['round_trip_per_s']:,.0f} round trips/s over"
                     f" {figures['redis_round_trips']:.2f} a unit: {by_round_trips:,.0f};"
                     f" by its {bench['pipelined_per_s']:,.0f} pipelined commands/s over"
                     f" {figures['redis_commands']:.1f} a unit: {by_commands:,.0f}")
        today = figures["per_s"]
        lines.append(f"  today's load: {today:,.0f} {unit} (this stack, this machine, saturated)")
        for factor in FACTORS:
            need = needs(figures, factor * today)
            lines.append(f"  x{factor:<5} {factor * today:>12,.0f} {unit}: "
                         + ", ".join(f"{name} {n:,}" for name, n in need.items()))
    fan = costs["fanout"]
    lines.append(f"One run lives in one cell, so on one shard: a single run's tasks/s is at most one shard's,"
                 f" {capacity(fan)[REDIS]:,.0f} (x{capacity(fan)[REDIS] / fan['per_s']:.1f} today's fan-out),"
                 " whatever the cluster's size.")
    if not hops:
        return "\n".join(lines) + "\n"
    today = fan["per_s"]
    loads = {factor: (factor * today, needs(fan, factor * today)) for factor in FACTORS}

    def scale(process: str, need: Mapping[str, int]) -> float:
        """How many times the measured stack's ``process`` processes a deployment runs."""
        if process == "worker":
            return need["worker replicas"] / workers
        return need.get(f"{process} replicas", 1)

    idle_rt = {name: rt for name, rt in hops["idle"]["redis_round_trips"].items() if name in SERVICES}
    lines.append(f"Readers x cells ({CELLS_PER_SHARD} cells a shard; every reader process reads every cell):"
                 " idle round trips/s per process and cell: "
                 + ", ".join(f"{name} {rt * scale(name, {'worker replicas': 1}):.2f}"
                             for name, rt in sorted(idle_rt.items())))
    for factor, (load, need) in loads.items():
        cells = CELLS_PER_SHARD * need["Redis shards"]
        idle_load = cells * sum(rt * scale(name, need) for name, rt in idle_rt.items())
        shards_rt = need["Redis shards"] * bench["round_trip_per_s"]
        per_loop = load / (cells * need["scheduler replicas"])
        lines.append(f"  x{factor:<5} {cells:>6,} cells: idle polling {idle_load:>12,.0f} round trips/s"
                     f" ({idle_load / shards_rt:.1%} of the shards' round trips);"
                     f" outcomes per scheduler loop (cell x replica) {per_loop:,.1f}/s"
                     f" (today {today:,.0f}/s: batches shrink)")
    lines.append("Single keys (outside the cells), commands/s at each load: per fan-out task and per idle"
                 " second of each process (hops pass), scaled by the load and by the processes it needs:")
    lines.append(f"  {'':<51}" + "".join(f"{'x' + str(f):>14}" for f in FACTORS))
    per_task, idle = hops["fanout"]["redis_by_key"], hops["idle"]["redis_by_key"]
    for pattern, label in SINGLE_KEYS.items():
        rates = []
        for load, need in loads.values():
            rate = 0.0
            for key in {*per_task, *idle}:
                process, _, key_of = key.partition(" ")
                if key_of == pattern:
                    rate += load * per_task.get(key, 0) + scale(process, need) * idle.get(key, 0)
            rates.append(rate)
        busy = [f"x{f}" for f, r in zip(FACTORS, rates, strict=True) if r > BUSY * bench["round_trip_per_s"]]
        lines.append(f"  {pattern:<24} {label:<26}" + "".join(f"{r:>14,.0f}" for r in rates)
                     + (f"  > {BUSY:.0%} of a core's round trips at {', '.join(busy)}" if busy else ""))
    return "\n".join(lines) + "\n"


def deployment_stacks(workers: int, cells: int) -> dict[str, tuple[int, int, Callable[[], LocalStack]]]:
    """The deployments the check measures beside one stack: label -> (Redis shards, replicas of each
    server, the stack). ``(a0)`` is the cluster's layout (``cells`` hash-tagged cells) on one Redis:
    the cost of the cells themselves (a loop per cell in every reader), without a cluster."""
    return {
        f"(a0) 1 shard, {cells} cells": (1, 1, lambda: LocalStack(
            workers=workers, task_modules=TASK_MODULES, cells=cells)),
        f"(a) 3-primary cluster, {cells} cells": (3, 1, lambda: LocalStack(
            workers=workers, task_modules=TASK_MODULES, redis_cluster=True, cells=cells)),
        "(b) 1 shard, 2 replicas each": (1, 2, lambda: LocalStack(
            workers=workers, task_modules=TASK_MODULES, replicas=dict.fromkeys(SERVERS, 2))),
    }


def check_lines(costs: Mapping[str, dict], deployments: Mapping[str, dict],
                shapes: Mapping[str, tuple[int, int]], cores: float, workers: int) -> str:
    """One stack's throughput beside the model's prediction, and each measured deployment's
    (``deployments``: label -> its costs; ``shapes``: label -> (shards, replicas)) beside the
    model's prediction made from the one stack's costs."""
    measured_all = {"1 shard, 1 replica each (default layout)": costs, **deployments}
    got = {label: {m: c[m]["per_s"] * sum(service_cpu(c[m]).values()) / 1e6 for m in MEASURES}
           for label, c in measured_all.items()}
    lines = [f"{'deployment on this machine':<40}{'measure':>8}{'predicted':>11}{'measured':>10}"
             f"{'meas/pred':>10}{'ratio to 1 stack: pred':>24}{'meas':>7}{'CPU us/unit':>13}  binds (model)"]
    for measure in MEASURES:
        base = costs[measure]
        base_predicted, binding = predict(base, cores, workers=workers)
        lines.append(f"{'1 shard, 1 replica each (default layout)':<40}{measure:>8}{base_predicted:>11,.0f}"
                     f"{base['per_s']:>10,.0f}{base['per_s'] / base_predicted:>10.2f}{'1.00':>24}{'1.00':>7}"
                     f"{sum(service_cpu(base).values()):>13,.0f}  {binding}")
        for label, (shards, replicas) in shapes.items():
            predicted, binding = predict(base, cores, shards=shards, replicas=replicas, workers=workers)
            figures = deployments[label][measure]
            rate = figures["per_s"]
            cpu = sum(service_cpu(figures).values())
            lines.append(f"{label:<40}{measure:>8}{predicted:>11,.0f}{rate:>10,.0f}"
                         f"{rate / predicted:>10.2f}{predicted / base_predicted:>24.2f}"
                         f"{rate / base['per_s']:>7.2f}{cpu:>13,.0f}  {binding}")
    used = "; ".join((label.split(" ")[0] if label.startswith("(") else "one stack") + " "
                     + ", ".join(f"{m} {c:.2f}" for m, c in by.items()) for label, by in got.items())
    lines.append(f"cores the stack's processes (client included) used while measured: {used} of {cores:g}"
                 " (the rest went to the machine's other work: load average above).")
    lines.append(
        f"On {cores:g} cores every deployment is bound by the machine's CPU: the model predicts about the"
        " same throughput whatever the shards and replicas, and a measured ratio under 1 is the overhead"
        " of more processes on the same cores (CPU per unit, all processes: the column), not a lack of"
        " scale."
    )
    return "\n".join(lines) + "\n"


def profile_lines(out_dir: Path) -> str:
    """Per measure and process: the three largest libraries (attributed) and our three largest
    functions (attributed); the full summary is in ``<out_dir>/summary.txt``."""
    summaries = {path.stem: profiling.summarise(path) for path in sorted(out_dir.glob("*-*.txt"))}
    profiling.report(out_dir, summaries)
    lines = [f"profiles (py-spy, GIL holder, % of samples; all of it in {out_dir}/summary.txt):"]
    for stem, summary in summaries.items():
        libraries = ", ".join(f"{n} {p}%" for n, p in summary["library_attributed_pct"][:3])
        ours = ", ".join(f"{n.split(' (')[0]} {p}%" for n, p in summary["ours_attributed_pct"][:3])
        lines.append(f"  {stem:<22} {libraries}; ours: {ours}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fanout", type=int, default=5_000, help="tasks of the fan-out")
    parser.add_argument("--runs", type=int, default=1_000, help="one-task runs submitted at once")
    parser.add_argument("--threads", type=int, default=8, help="client threads submitting the runs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cores", type=float, default=float(len(os.sched_getaffinity(0))),
                        help="cores of the machine the check predicts for (default: this process's)")
    parser.add_argument("--no-hops", action="store_true", help="skip the MONITOR pass (hops.py)")
    parser.add_argument("--cells", type=int, default=CELLS_PER_SHARD * 3,
                        help="cells of the check's cell layouts (default: 4 for each of 3 primaries)")
    parser.add_argument("--no-deployments", action="store_true",
                        help="measure one stack only, not the deployments of the check (cluster, replicas)")
    parser.add_argument("--idle-seconds", type=float, default=25.0,
                        help="idle window of the MONITOR pass: longer than the workers' heartbeat "
                             "interval (20 s by default), so the worker registry's traffic shows")
    parser.add_argument("--profile", metavar="DIR", type=Path,
                        help="record every stack process with py-spy during the measures, into DIR")
    parser.add_argument("--py-spy", metavar="PATH", help="the py-spy executable (default: on the PATH)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure to PATH as JSON")
    args = parser.parse_args(argv)
    for name in ("fanout", "runs", "threads", "workers", "cells"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    sizes = Sizes(fanout=args.fanout, many_runs=args.runs, many_steps=1, many_threads=args.threads)
    profiler = (profiling.Profiler(profiling.find_py_spy(args.py_spy), args.profile)
                if args.profile else None)
    out = sys.stdout.write

    costs = measure_costs(LocalStack(workers=args.workers, task_modules=TASK_MODULES), sizes, profiler)
    stacks = {} if args.no_deployments else deployment_stacks(args.workers, args.cells)
    deployments = {label: measure_costs(make(), sizes, None) for label, (_s, _r, make) in stacks.items()}
    hops = {} if args.no_hops else measure_hops(args.workers, {}, fanout=min(args.fanout, 1_000),
                                                      idle_s=args.idle_seconds)
    bench = redis_benchmark()
    load = os.getloadavg()[0]
    out(f"\nScaling model ({args.workers} workers, {args.cores:g} cores, load average {load:.1f}"
        f"{'; PROFILED: timings perturbed' if profiler else ''})\n\n")
    out(costs_table(costs) + "\n")
    if hops:
        out(hops_lines(hops) + "\n")
    out(f"redis-benchmark, one private redis-server, 50 clients, single-key HSET: "
        f"{bench['round_trip_per_s']:,.0f}/s one a round trip,"
        f" {bench['pipelined_per_s']:,.0f}/s pipelined x32\n\n")
    out(model_lines(costs, bench, hops, args.workers) + "\n")
    shapes = {label: (shards, replicas) for label, (shards, replicas, _make) in stacks.items()}
    out(check_lines(costs, deployments, shapes, args.cores, args.workers) + "\n")
    if profiler:
        out(profile_lines(args.profile))
    if args.json:
        Path(args.json).write_text(json.dumps({"costs": costs, "deployments": deployments, "hops": hops,
                                               "redis_benchmark": bench,
                                               "load_average": load, "workers": args.workers}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
