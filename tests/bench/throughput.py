"""Benchmark: every figure of the speed targets (issue 13), each beside its raw Redis baseline.

    ./pants run tests/bench/throughput.py -- [--only latency,chain,fanout,group,many,hops]
        [--workers 2] [--concurrency N] [--latency-runs 200] [--chain-steps 100] [--fanout 10000]
        [--group 1000] [--many-runs 1000] [--many-threads 8] [--repeats 3]
        [--idle-seconds 5] [--set NAME=VALUE ...] [--tls] [--signing] [--role-tokens] [--json PATH]
        [--replicas 1,2]
        [--profile DIR [--py-spy PATH] [--profile-native]]

Starts a private redis-server and the four services as processes (2 workers by default, each with
the worker's default ``GRAFLOW_WORKER_CONCURRENCY`` unless ``--concurrency`` is given) and measures,
in the same run as the raw baselines (another private redis-server, ``baselines.py``) so that the
machine's noise hits both sides alike:

Each measure (its ``--only`` name), its raw baseline, and its target (issue 13, this 2-core machine,
2 workers):

- ``latency``: a one-task workflow, submit -> result in the client, p50 and p99. Baseline: one hop
  (XADD, XREADGROUP, XADD reply + XACK, XREAD). Target: p50 <= 2 ms, p99 <= 5 ms.
- ``chain``: ``a1 >> a2 >> ... >> a100`` of no-op tasks, submit -> result. Baseline: one request
  sent on 100 times through the queue. Target: <= 0.25 s (2.5 ms a step).
- ``fanout``: ``start >> parallel(10,000 units) >> total``, tasks/s. Baseline: pipelined XADD x100,
  XREADGROUP COUNT 100 + XACK per batch. Target: >= 10,000 tasks/s.
- ``group``: ``start >> parallel(1,000 no-ops) >> join``, submit -> result. Baseline: one hop, 1,000
  pipelined hops, one hop. Target: <= 0.15 s.
- ``many``: 1,000 runs of a 3-step chain submitted at once from 8 client threads: runs/s from the
  first submit to the last result, and the ``SubmitRun`` p50 meanwhile. Baseline: 1,000 requests of
  3 hops from 8 threads, and the XADD's p50. Target: >= 1,000 runs/s, ``SubmitRun`` p50 <= 1 ms.
- ``idle``: nothing submitted for 5 s (``--idle-seconds``): the background cost per second of
  each process (heartbeats, liveness checks, timers), so that it can be told from the per-task
  figures.
- every measure: CPU per task summed over every process of the stack, Redis included, the
  benchmark's client not (baseline: Redis and the baseline's own process, per message of the
  fan-out baseline). Target: <= 150 us (the fan-out's). And Redis commands
  (``INFO commandstats``) and round trips (``total_reads_processed``) per task.
- ``hops``: gRPC calls, Redis round trips and commands per process and per hop, per one-task run,
  per step of a chain, per fan-out task and per idle second (``hops.py``: a traced and MONITORed
  stack of its own, not timed).

The other targets of issue 13 are measured elsewhere: memory under a long soak by ``soak.py``
(flat RSS, Redis ``used_memory`` back to its baseline), and a SIGKILLed worker's task running
elsewhere by ``recovery.py`` (<= 1.0 s median, <= 1.5 s p99).

``--tls`` runs the stack with mTLS on every gRPC hop (certificates made at start), ``--signing``
with an HMAC key for its bus messages (``LocalStack(signing=True)``), ``--role-tokens`` with a token
per role (``LocalStack(role_tokens=True)``). ``security_cost.py`` runs the measures with all of them
and with none, alternately, and compares (docs/security.md, "Cost").

``--replicas 1,2`` measures the stack once per count of replicas of each server (scheduler,
coordinator, result-store: ``LocalStack(replicas=...)``, the clients and workers given every
replica's address) and prints the figures side by side after the main table (which is the first
count's). On 2 cores a second replica of each adds processes and connections, not cores: it shows
the overhead of replicas, not how they scale (docs/performance.md, "Replicas").

CPU and command counts barely move with the machine's noise, unlike wall-clock figures: they show
where a change's cost goes (per process: ``cpu_us_by_process`` in the JSON and the second table).
``--json PATH`` writes every figure, so runs can be compared. ``--profile DIR`` records every stack
process with py-spy during each timed measure (``profiling.py``; timings are then perturbed) and
writes the profiles and their summary there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from graflow.devstack import SERVERS, LocalStack
from graflow_runtime.local_redis import LocalRedis
from tests.bench import baselines, profiling
from tests.bench.cost import CLIENT, Cost, median, percentile
from tests.bench.hops import measure_hops
from tests.bench.measures import MEASURES, Sizes
from tests.bench.security import NO_SECURITY, Security, mtls

ALL = (*MEASURES, "hops")


@dataclass(frozen=True)
class Row:
    label: str
    target: str
    met: Callable[[float], bool] | None
    baseline: float | None
    graflow: float | None
    digits: int
    slower: Callable[[float, float], float] | None  # (baseline, graflow) -> how many times worse


def at_most(limit: float) -> Callable[[float], bool]:
    return lambda value: value <= limit


def at_least(limit: float) -> Callable[[float], bool]:
    return lambda value: value >= limit


def times(baseline: float, graflow: float) -> float:
    return graflow / baseline


def fraction(baseline: float, graflow: float) -> float:
    return baseline / graflow


def measure_baselines(selected: set[str], sizes: Sizes) -> dict[str, object]:
    """The raw figures of the selected measures (and of the costs: the fan-out baseline's)."""
    out: dict[str, object] = {}
    with LocalRedis() as server:
        if "latency" in selected:
            samples = baselines.latency_ms(server.url, sizes.latency_runs)
            out["latency"] = {"p50_ms": median(samples), "p99_ms": percentile(samples, 0.99)}
        if "chain" in selected:
            out["chain"] = {"seconds": baselines.chain_s(server.url, sizes.chain_steps)}
        if "group" in selected:
            out["group"] = {"seconds": baselines.group_s(server.url, sizes.group_members)}
        if "many" in selected:
            out["many"] = baselines.many_runs(server.url, sizes.many_runs, sizes.many_steps,
                                              sizes.many_threads)
        # The cost rows compare with the fan-out baseline's cost per message: always measured.
        out["fanout"] = baselines.throughput(server.url, sizes.fanout)
    return out


def measure_graflow(selected: set[str], sizes: Sizes, workers: int, env: dict[str, str],
                    profiler: profiling.Profiler | None, *,
                    security: Security = NO_SECURITY, replicas: int = 1) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    if not selected & set(MEASURES):
        return out
    stack = LocalStack(workers=workers, task_modules=["tests.bench.tasks"], env=env,
                       replicas=dict.fromkeys(SERVERS, replicas), **security.stack_options())
    try:
        stack.start()
        pids = {p.name: p.pid for p in [*stack.servers.values(), *stack.workers] if p.pid}
        cost = Cost(stack.redis_url, pids)
        for name, measure in MEASURES.items():
            if name not in selected:
                continue
            cost.start()
            with profiling.recording(profiler, name, pids):
                outcome = measure(stack, sizes)
            out[name] = {**outcome.figures, "tasks": outcome.tasks, **cost.stop(outcome.tasks)}
        cost.close()
    finally:
        stack.stop()
    return out


def rows(base: dict, graflow: dict, hops: dict, sizes: Sizes) -> list[Row]:
    def get(source: dict, measure: str, key: str) -> float | None:
        return source.get(measure, {}).get(key)

    fan_base = base["fanout"]
    return [
        Row("one-task submit -> result p50 (ms)", "<= 2", at_most(2.0),
            get(base, "latency", "p50_ms"), get(graflow, "latency", "p50_ms"), 2, times),
        Row("one-task submit -> result p99 (ms)", "<= 5", at_most(5.0),
            get(base, "latency", "p99_ms"), get(graflow, "latency", "p99_ms"), 2, times),
        Row(f"{sizes.chain_steps}-step chain (s)", "<= 0.25", at_most(0.25),
            get(base, "chain", "seconds"), get(graflow, "chain", "seconds"), 3, times),
        Row(f"{sizes.fanout:,}-task fan-out (tasks/s)", ">= 10,000", at_least(10_000),
            fan_base["tasks_per_s"], get(graflow, "fanout", "tasks_per_s"), 0, fraction),
        Row(f"{sizes.group_members:,}-way group + join (s)", "<= 0.15", at_most(0.15),
            get(base, "group", "seconds"), get(graflow, "group", "seconds"), 3, times),
        Row(f"{sizes.many_runs:,} runs x {sizes.many_steps} steps, {sizes.many_threads} threads (runs/s)",
            ">= 1,000", at_least(1_000), get(base, "many", "runs_per_s"), get(graflow, "many", "runs_per_s"),
            0, fraction),
        Row("  SubmitRun p50 while they run (ms)", "<= 1", at_most(1.0),
            get(base, "many", "submit_p50_ms"), get(graflow, "many", "submit_p50_ms"), 2, times),
        Row("CPU per fan-out task, all processes (us)", "<= 150", at_most(150),
            fan_base["cpu_us"], get(graflow, "fanout", "cpu_us"), 0, times),
        Row("Redis commands per fan-out task", "-", None,
            fan_base["redis_commands"], get(graflow, "fanout", "redis_commands"), 2, times),
        Row("Redis round trips per fan-out task", "-", None,
            fan_base["redis_round_trips"], get(graflow, "fanout", "redis_round_trips"), 2, times),
        Row("gRPC calls per fan-out task (hops)", "-", None, None,
            sum(hops["fanout"]["grpc_calls"].values()) if hops else None, 3, None),
        Row("one-task run: CPU, all processes (us)", "-", None, None,
            get(graflow, "latency", "cpu_us"), 0, None),
        Row("one-task run: Redis commands", "-", None, None,
            get(graflow, "latency", "redis_commands"), 1, None),
        Row("one-task run: Redis round trips", "-", None, None,
            get(graflow, "latency", "redis_round_trips"), 1, None),
        Row("one-task run: gRPC calls (hops)", "-", None, None,
            sum(hops["one_task"]["grpc_calls"].values()) if hops else None, 1, None),
    ]


def number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(rows_: list[Row]) -> str:
    lines = [f"{'measure':<52}{'target':>10}{'baseline':>12}{'graflow':>12}{'x worse':>9}  met?"]
    for row in rows_:
        ratio = (row.slower(row.baseline, row.graflow)
                 if row.slower and row.baseline and row.graflow else None)
        met = "-" if row.met is None or row.graflow is None else ("yes" if row.met(row.graflow) else "NO")
        lines.append(f"{row.label:<52}{row.target:>10}{number(row.baseline, row.digits):>12}"
                     f"{number(row.graflow, row.digits):>12}{number(ratio, 1):>9}  {met}")
    return "\n".join(lines) + "\n"


def cpu_table(graflow: dict) -> str:
    """CPU us per task (per run for the one-task measure) of each process, per measure."""
    names = sorted({p for fig in graflow.values() for p in fig["cpu_us_by_process"]},
                   key=lambda p: (p == CLIENT, p))
    lines = [f"{'CPU us per task':<16}" + "".join(f"{n:>14}" for n in names) + f"{'all (no client)':>17}"]
    for measure, fig in graflow.items():
        by = fig["cpu_us_by_process"]
        unit = {"latency": "per run", "idle": "per s"}.get(measure, "per task")
        lines.append(f"{measure + ' ' + unit:<16}" + "".join(f"{by.get(n, 0):>14,.0f}" for n in names)
                     + f"{fig['cpu_us']:>17,.0f}")
    return "\n".join(lines) + "\n"


def hops_table(hops: dict) -> str:
    """gRPC calls and Redis traffic per one-task run, per chain step, per fan-out task and per idle
    second."""
    windows = ("one_task", "chain", "fanout", "idle")
    lines = [f"{'per process / hop':<58}" + "".join(f"{hops['units'][w]:>12}" for w in windows)]

    def section(title: str, key: str) -> None:
        lines.append(title)
        keys = sorted({k for w in windows for k in hops[w][key]},
                      key=lambda k: -hops["one_task"][key].get(k, 0))
        for k in keys:
            lines.append(f"  {k:<56}" + "".join(f"{hops[w][key].get(k, 0):>12.3f}" for w in windows))

    section("gRPC calls (caller->callee method)", "grpc_calls")
    section("Redis round trips (process)", "redis_round_trips")
    section("Redis commands sent (process)", "redis_commands")
    section("Redis commands run by its Lua scripts (process)", "redis_commands_in_scripts")
    section("Redis commands by process and command (EVALSHA named by script)", "redis_by_command")
    section("Redis commands run by each Lua script", "redis_script_commands")
    lines.append(f"  {'check: Redis read events (total_reads_processed)':<56}"
                 + "".join(f"{hops[w]['redis_reads_processed']:>12.2f}" for w in windows))
    return "\n".join(lines) + "\n"


# The figures compared across counts of replicas: (label, measure, key, digits).
REPLICA_FIGURES = (
    ("one-task submit -> result p50 (ms)", "latency", "p50_ms", 2),
    ("one-task submit -> result p99 (ms)", "latency", "p99_ms", 2),
    ("chain (s)", "chain", "seconds", 3),
    ("fan-out (tasks/s)", "fanout", "tasks_per_s", 0),
    ("group + join (s)", "group", "seconds", 3),
    ("many runs (runs/s)", "many", "runs_per_s", 0),
    ("  SubmitRun p50 while they run (ms)", "many", "submit_p50_ms", 2),
    ("CPU per fan-out task, all processes (us)", "fanout", "cpu_us", 0),
)


def replicas_table(by_count: dict[int, dict]) -> str:
    """Each figure with 1, 2... replicas of each server, and the highest count's over the lowest's."""
    counts = sorted(by_count)
    head = "".join(f"{f'{n} replica' + ('s' if n > 1 else ''):>14}" for n in counts)
    lines = [f"{'replicas of each server':<44}{head}{'ratio':>8}"]
    for label, measure, key, digits in REPLICA_FIGURES:
        values = [by_count[n].get(measure, {}).get(key) for n in counts]
        if all(v is None for v in values):
            continue
        ratio = values[-1] / values[0] if values[0] and values[-1] is not None else None
        lines.append(f"{label:<44}" + "".join(f"{number(v, digits):>14}" for v in values)
                     + f"{number(ratio, 2):>8}")
    return "\n".join(lines) + "\n"


def commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(ALL),
                        help=f"comma-separated measures to run (default: all of {','.join(ALL)})")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=None,
                        help="GRAFLOW_WORKER_CONCURRENCY of each worker (default: the worker's default)")
    defaults = Sizes()
    parser.add_argument("--latency-runs", type=int, default=defaults.latency_runs)
    parser.add_argument("--chain-steps", type=int, default=defaults.chain_steps)
    parser.add_argument("--fanout", type=int, default=defaults.fanout)
    parser.add_argument("--group", type=int, default=defaults.group_members, help="members of the group")
    parser.add_argument("--many-runs", type=int, default=defaults.many_runs)
    parser.add_argument("--many-steps", type=int, default=defaults.many_steps)
    parser.add_argument("--many-threads", type=int, default=defaults.many_threads)
    parser.add_argument("--repeats", type=int, default=defaults.repeats,
                        help="timed runs of the chain and of the group (median)")
    parser.add_argument("--idle-seconds", type=int, default=defaults.idle_s,
                        help="length of the idle measure (a longer one resolves small per-second costs)")
    parser.add_argument("--set", metavar="NAME=VALUE", action="append", default=[],
                        help="extra environment of the stack's processes, e.g. "
                             "GRAFLOW_COORDINATOR_HEARTBEAT_INTERVAL_MS=1000 (repeatable)")
    parser.add_argument("--tls", action="store_true", help="mTLS on every gRPC hop")
    parser.add_argument("--signing", action="store_true", help="sign and verify the bus's messages")
    parser.add_argument("--role-tokens", action="store_true",
                        help="servers accept a token per role and every process sends its own "
                             "(LocalStack(role_tokens=True), docs/security.md \"Roles\"): the cost of auth")
    parser.add_argument("--json", metavar="PATH", help="also write every figure to PATH as JSON")
    parser.add_argument("--replicas", default="1",
                        help="comma-separated counts of replicas of each server, each measured "
                             "(e.g. 1,2; default 1)")
    parser.add_argument("--profile", metavar="DIR", type=Path,
                        help="record every stack process with py-spy during each timed measure, into DIR")
    parser.add_argument("--py-spy", metavar="PATH", help="the py-spy executable (default: on the PATH)")
    parser.add_argument("--profile-native", action="store_true",
                        help="with --profile: C and Cython frames too (pauses each process at every sample)")
    args = parser.parse_args(argv)
    selected = set(args.only.split(","))
    unknown = selected - set(ALL)
    if unknown:
        parser.error(f"unknown measure(s) {', '.join(sorted(unknown))}: choose among {', '.join(ALL)}")
    try:
        counts = [int(count) for count in args.replicas.split(",")]
    except ValueError:
        parser.error(f"--replicas {args.replicas!r}: expected counts such as 1,2")
    if any(count < 1 for count in counts):
        parser.error(f"--replicas {args.replicas!r}: each count must be >= 1")
    sizes = Sizes(latency_runs=args.latency_runs, chain_steps=args.chain_steps, fanout=args.fanout,
                  group_members=args.group, many_runs=args.many_runs, many_steps=args.many_steps,
                  many_threads=args.many_threads, repeats=args.repeats, idle_s=args.idle_seconds)
    profiler = (profiling.Profiler(profiling.find_py_spy(args.py_spy), args.profile,
                                   native=args.profile_native)
                if args.profile else None)
    env = {} if args.concurrency is None else {"GRAFLOW_WORKER_CONCURRENCY": str(args.concurrency)}
    for setting in args.set:
        name, sep, value = setting.partition("=")
        if not sep or not name:
            parser.error(f"--set {setting!r}: expected NAME=VALUE")
        env[name] = value
    out = sys.stdout.write

    base = measure_baselines(selected, sizes)
    with tempfile.TemporaryDirectory(prefix="graflow-bench-certs-") as certificates:
        security = Security(tls=mtls(Path(certificates)) if args.tls else None, signing=args.signing,
                            role_tokens=args.role_tokens)
        by_count = {
            count: measure_graflow(selected, sizes, args.workers, env, profiler, security=security,
                                   replicas=count)
            for count in counts
        }
    graflow = by_count[counts[0]]
    hops = measure_hops(args.workers, env) if "hops" in selected else {}

    concurrency = "default" if args.concurrency is None else args.concurrency
    out(f"\nGraflow benchmark ({args.workers} workers, concurrency {concurrency}, "
        f"{counts[0]} replica(s) of each server, "
        f"security: {security.label()}; "
        f"{'PROFILED: timings perturbed; ' if profiler else ''}commit {commit() or '?'})\n")
    out(table(rows(base, graflow, hops, sizes)))
    out("x worse: Graflow / baseline (times, CPU, counts) or baseline / Graflow (rates).\n\n")
    if graflow:
        out(cpu_table(graflow) + "\n")
    if len(counts) > 1:
        out(replicas_table(by_count) + "ratio: the highest count's figure over the lowest's.\n\n")
    if hops:
        out(hops_table(hops) + "\n")
    if profiler:
        summaries = {path.stem: profiling.summarise(path) for path in sorted(args.profile.glob("*-*.txt"))}
        profiling.report(args.profile, summaries)
        (args.profile / "summary.json").write_text(json.dumps(summaries, indent=2))
        out(f"profiles and their summary: {args.profile}/ (summary.txt)\n")
    if args.json:
        figures = {
            "commit": commit(), "workers": args.workers, "concurrency": concurrency,
            "security": security.label(),
            "profiled": profiler is not None, "sizes": sizes.__dict__,
            "baseline": base, "graflow": graflow, "hops": hops,
            "replicas": {str(count): figures for count, figures in by_count.items()},
        }
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
