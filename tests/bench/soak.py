"""Soak: N tasks through W workers, a random worker SIGKILLed every few seconds (or none), and
the memory of every process and of Redis over the whole run.

    ./pants run tests/bench/soak.py -- [--tasks 20000] [--workers 4] [--kill-every 3]
        [--run-size 2000] [--runs-in-flight 2] [--task-ms 10] [--retention-s 20] [--seed N]
        [--warmup-runs N] [--sample-every 5] [--settle-s S] [--census-sample 200]
        [--set NAME=VALUE ...] [--json PATH]
    # recovery under kills (issue 3):
    ./pants run tests/bench/soak.py -- --tasks 100000 --workers 4 --kill-every 3
    # memory under a 1,000,000-task soak (issue 13; docs/performance.md has the figures):
    ./pants run tests/bench/soak.py -- --tasks 1000000 --run-size 250 --runs-in-flight 8 \
        --warmup-runs 80 --retention-s 20 --kill-every 3 --json soak.json   # --kill-every 0: no kills

Starts a private redis-server, an observer redis-server and the four services as processes, then
submits runs of ``--run-size`` tasks (``soak_start >> parallel(units) >> soak_total``), keeping
``--runs-in-flight`` runs going, until ``--tasks`` tasks were submitted. Meanwhile, every
``--kill-every`` seconds, a random live worker is SIGKILLed and a replacement started (``0``: no
kills, memory only). The victim is a random worker among those holding deliveries at that moment
(any worker when none does), so that kills measure recovery.

Phases: a warm-up (``--warmup-runs`` runs driven like the load, kills included), a wait of
``--settle-s`` for them to expire, the baseline ("after warm-up"), the load, a memory sample when
the last run ended ("end"), the same wait again ("settled"). Ended runs' keys expire after
``--retention-s`` (scheduler and result-store retention); each run is checked as soon as it ends.
It prints:

- tasks submitted, and lost tasks: task nodes of runs that did not finish, or that are not
  SUCCEEDED in their run's state (expected 0);
- duplicated effects on run state: task nodes that succeeded more than once in their run's event
  history (expected 0); reported apart, raw task-body re-executions (every body execution is
  counted on the observer Redis): at-least-once re-runs of tasks whose worker died mid-task,
  which must not show in run state;
- recovery times p50/p99: from a kill to each task the killed worker held (its pending entries at
  the kill) being SUCCEEDED in run state, i.e. completed on another worker;
- memory (``memory.py``), sampled every ``--sample-every`` s: per service (and Redis's RSS and
  ``used_memory``) after warm-up, max, end, settled, the largest deviation from after warm-up and
  "flat?" against issue 13's target (within 10% at every sample). Workers are judged like the
  services without kills; with kills (each lives a few seconds) their RSS is given as a
  distribution over their lifetimes (first sample, peak, peak over first);
- Redis ``used_memory`` once retention has passed against the baseline, with the growth of the
  records kept on purpose (dispatch records, ``gf:ended``, dead letters, graphs) counted apart,
  ``MEMORY STATS``, and a census of the keys by pattern (keys, elements, bytes by ``MEMORY
  USAGE``) at the baseline, the end of the load and once settled, each pattern with what it is
  and what bounds it. A FINDING line names what is left or grew without an explanation.

Exit status 1 when anything was lost or duplicated (the memory verdict is printed, and in the JSON).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import redis

from graflow import GraflowError, parallel, workflow
from graflow.devstack import LocalStack, ServiceProcess
from graflow_api.v1 import messages_pb2
from graflow_runtime import keys
from graflow_runtime.local_redis import LocalRedis
from tests.bench import memory
from tests.bench.cost import percentile
from tests.bench.memory import (
    LOAD,
    SETTLE,
    MemorySampler,
    census,
    findings,
    judge,
    memory_stats,
    redis_verdict,
    worker_lifetimes,
)
from tests.bench.soak_tasks import soak_start, soak_total, soak_unit
from tests.bench.throughput import commit

ENDED = {b"SUCCEEDED", b"FAILED", b"CANCELED"}
LANES = keys.queue_lanes("default")  # high lane first, then the normal lane


# ---- the runs ----
@dataclass
class Totals:
    runs_submitted: int = 0
    runs_succeeded: int = 0
    runs_not_finished: int = 0
    runs_failed: int = 0
    tasks_submitted: int = 0
    lost_tasks: int = 0
    duplicated: int = 0
    reruns: int = 0
    never_ran: int = 0
    failures: list[str] = field(default_factory=list)


class Driver(threading.Thread):
    """Submits the runs, keeps ``in_flight`` going, checks each one as soon as it ends."""

    def __init__(self, stack: LocalStack, bus: redis.Redis, fx: redis.Redis, spec: object,
                 task_ids: list[str], runs: int, in_flight: int, run_timeout_s: float) -> None:
        super().__init__(name="soak-driver", daemon=True)
        self.stack, self.bus, self.fx = stack, bus, fx
        self.spec, self.task_ids = spec, task_ids
        self.runs, self.in_flight, self.run_timeout_s = runs, in_flight, run_timeout_s
        self.totals = Totals()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._drive()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc

    def _drive(self) -> None:
        active: dict[str, float] = {}
        with self.stack.client(timeout=30) as client:
            while self.totals.runs_submitted < self.runs or active:
                while self.totals.runs_submitted < self.runs and len(active) < self.in_flight:
                    active[self._submit(client)] = time.monotonic()
                for run_id, began in list(active.items()):
                    status = self.bus.hget(keys.run_meta(run_id), "status")
                    if status in ENDED:
                        del active[run_id]
                        self.check(run_id, finished=True)
                    elif time.monotonic() - began > self.run_timeout_s:
                        del active[run_id]
                        self.check(run_id, finished=False)
                time.sleep(0.05)

    def _submit(self, client: object) -> str:
        for attempt in range(20):
            try:
                run = client.submit(self.spec)  # type: ignore[attr-defined]
                break
            except GraflowError as exc:
                if attempt == 19:
                    raise
                print(f"  submit failed ({exc}); retrying", file=sys.stderr)
                time.sleep(0.5)
        self.totals.runs_submitted += 1
        self.totals.tasks_submitted += len(self.task_ids)
        return run.id

    def check(self, run_id: str, *, finished: bool) -> None:
        t = self.totals
        status = (self.bus.hget(keys.run_meta(run_id), "status") or b"?").decode()
        states = {k.decode(): v for k, v in self.bus.hgetall(keys.run_state(run_id)).items()}
        not_succeeded = [n for n in self.task_ids if states.get(n) != b"SUCCEEDED"]
        if not finished:
            t.runs_not_finished += 1
            t.failures.append(f"run {run_id} did not finish within {self.run_timeout_s:.0f}s ({status})")
        elif status == "SUCCEEDED":
            t.runs_succeeded += 1
        else:
            t.runs_failed += 1
            error = (self.bus.hget(keys.run_meta(run_id), "error") or b"")[:300]
            t.failures.append(f"run {run_id} ended {status}: {error!r}")
        t.lost_tasks += len(not_succeeded)
        successes: Counter[str] = Counter()
        start = "-"
        while True:
            page = self.bus.xrange(keys.run_events(run_id), min=start, max="+", count=10_000)
            for _entry_id, fields in page:
                if fields.get(b"t") == b"NODE_SUCCEEDED":
                    successes[fields[b"n"].decode()] += 1
            if len(page) < 10_000:
                break
            start = "(" + page[-1][0].decode()
        t.duplicated += sum(c - 1 for c in successes.values() if c > 1)
        runs = {k.decode(): int(v) for k, v in self.fx.hgetall(f"soak:fx:{run_id}").items()}
        t.reruns += sum(c - 1 for c in runs.values() if c > 1)
        t.never_ran += sum(1 for n in successes if n in self.task_ids and runs.get(n, 0) == 0)


# ---- the kills ----
@dataclass
class Kill:
    worker: str
    at: float
    held: list[tuple[str, str]]
    done: dict[tuple[str, str], float] = field(default_factory=dict)


class RecoveryTracker(threading.Thread):
    """Polls run state for the tasks each killed worker held; records kill -> SUCCEEDED."""

    def __init__(self, bus: redis.Redis) -> None:
        super().__init__(name="soak-recovery", daemon=True)
        self.bus = bus
        self.kills: list[Kill] = []
        self._lock = threading.Lock()
        self.stop = threading.Event()

    def add(self, kill: Kill) -> None:
        with self._lock:
            self.kills.append(kill)

    def open_tasks(self) -> list[tuple[Kill, tuple[str, str]]]:
        with self._lock:
            return [(k, t) for k in self.kills for t in k.held if t not in k.done]

    def run(self) -> None:
        while not self.stop.wait(0.02):
            todo = self.open_tasks()
            if not todo:
                continue
            pipe = self.bus.pipeline(transaction=False)
            for _kill, (run_id, node_id) in todo:
                pipe.hget(keys.run_state(run_id), node_id)
            now = time.monotonic()
            for (kill, task), state in zip(todo, pipe.execute(), strict=True):
                if state == b"SUCCEEDED":
                    kill.done[task] = now - kill.at

    def samples(self) -> list[float]:
        return [s for k in self.kills for s in k.done.values()]


def held_by(bus: redis.Redis, worker_id: str) -> list[tuple[str, str]]:
    """(run, node) of the deliveries pending for ``worker_id`` (it was just killed)."""
    pipe = bus.pipeline(transaction=False)
    for lane in LANES:
        if bus.exists(lane):
            rows = bus.xpending_range(lane, keys.WORKER_GROUP, "-", "+", 10_000, consumername=worker_id)
            for row in rows:
                pipe.xrange(lane, min=row["message_id"], max=row["message_id"], count=1)
    out = []
    for entries in pipe.execute():
        if not entries:
            continue
        try:
            env = messages_pb2.TaskEnvelope.FromString(entries[0][1].get(keys.ENVELOPE_FIELD, b""))
        except Exception:  # noqa: BLE001 - a foreign entry: not a task of ours
            continue
        out.append((env.run_id, env.node_id))
    return out


def worker_id_of(process: ServiceProcess) -> str:
    return process.env["GRAFLOW_WORKER_WORKER_ID"]


def kill_one(stack: LocalStack, bus: redis.Redis, rng: random.Random, tracker: RecoveryTracker) -> str | None:
    """SIGKILL a random worker among those registered with the coordinator that hold deliveries
    (any registered one when none does), then start a replacement without waiting for it (on 2
    busy cores a worker takes seconds to come up)."""
    live = [w for w in stack.workers if w.running]
    registered = [w for w in live if bus.zscore(keys.WORKERS_INDEX, worker_id_of(w)) is not None]
    if not registered:
        return None
    holding = {
        c["name"].decode()
        for lane in LANES if bus.exists(lane)
        for c in bus.xpending(lane, keys.WORKER_GROUP)["consumers"] if int(c["pending"]) > 0
    }
    busy = [w for w in registered if worker_id_of(w) in holding]
    process = rng.choice(busy or registered)
    worker_id = worker_id_of(process)
    at = time.monotonic()
    process.send(signal.SIGKILL)
    if process.popen is not None:
        process.popen.wait(timeout=10)
    tracker.add(Kill(worker_id, at, held_by(bus, worker_id)))
    stack.start_worker(wait=False)
    return worker_id


# ---- main ----
def build_spec(run_size: int, task_ms: float) -> tuple[object, list[str]]:
    units = max(1, run_size - 2)
    with workflow("soak") as wf:
        soak_start(task_id="start") >> parallel(
            *[soak_unit(task_id=f"u{i}", i=i, ms=task_ms) for i in range(units)]
        ) >> soak_total(task_id="total")
    spec = wf.spec()
    return spec, [node.id for node in spec.nodes]


# Waited beyond the retention before "settled": the scheduler's sweeps (10 s) prune the listing
# and trim the outcomes, and the coordinator deletes a consumer that is no registered worker once
# it was idle for the lease (40 s), at its next queue maintenance (5 s).
SETTLE_MARGIN_S = 55


def drive(driver: Driver, stack: LocalStack, bus: redis.Redis, rng: random.Random,
          tracker: RecoveryTracker, kill_every: float, began: float) -> None:
    """Run ``driver`` to its end, SIGKILLing a worker every ``kill_every`` seconds (0: never)."""
    driver.start()
    next_kill = began + kill_every if kill_every > 0 else float("inf")
    while driver.is_alive():
        driver.join(timeout=min(5.0, max(0.0, next_kill - time.monotonic())))
        if driver.is_alive() and time.monotonic() >= next_kill:
            next_kill += kill_every
            killed = kill_one(stack, bus, rng, tracker)
            if killed is None:
                continue
            sys.stdout.write(f"  {time.monotonic() - began:7.1f}s  killed {killed:<15} holding "
                             f"{len(tracker.kills[-1].held):3d} tasks; runs submitted "
                             f"{driver.totals.runs_submitted}/{driver.runs}\n")
    if driver.error is not None:
        raise driver.error


def settle(seconds: float, what: str) -> None:
    sys.stdout.write(f"{what}: waiting {seconds:.0f} s for ended runs to expire and the sweeps to trim\n")
    time.sleep(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks to push through (default 20000)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--kill-every", type=float, default=3.0,
                        help="seconds between worker kills; 0: no kills (memory only)")
    parser.add_argument("--run-size", type=int, default=2000, help="tasks per run")
    parser.add_argument("--runs-in-flight", type=int, default=2)
    parser.add_argument("--task-ms", type=float, default=10.0, help="time each task takes")
    parser.add_argument("--retention-s", type=int, default=20, help="retention of ended runs")
    parser.add_argument("--run-timeout", type=float, default=300.0, help="a run not ended by then is lost")
    parser.add_argument("--warmup-runs", type=int, default=None,
                        help="runs of the warm-up, driven like the load (default: 2 x --runs-in-flight)")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between memory samples")
    parser.add_argument("--settle-s", type=float, default=None,
                        help="wait after the warm-up and after the load, for ended runs to expire and "
                             f"the sweeps to trim (default: --retention-s + {SETTLE_MARGIN_S})")
    parser.add_argument("--census-sample", type=int, default=200,
                        help="keys of a pattern whose MEMORY USAGE is read (more are extrapolated)")
    parser.add_argument("--set", metavar="NAME=VALUE", action="append", default=[],
                        help="extra environment of the stack's processes (repeatable)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure and sample to PATH as JSON")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if args.run_size < 3 or args.tasks < args.run_size or args.workers < 2 or args.kill_every < 0:
        parser.error("need --run-size >= 3, --tasks >= --run-size, --workers >= 2, --kill-every >= 0")
    rng = random.Random(args.seed)
    spec, task_ids = build_spec(args.run_size, args.task_ms)
    runs = -(-args.tasks // len(task_ids))
    warmup_runs = args.warmup_runs if args.warmup_runs is not None else 2 * args.runs_in_flight
    settle_s = args.settle_s if args.settle_s is not None else args.retention_s + SETTLE_MARGIN_S
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when the output is a file
    out = sys.stdout.write

    observer = LocalRedis().start()
    server = LocalRedis().start()
    env = {
        "GRAFLOW_SOAK_EFFECTS_URL": observer.url,
        "GRAFLOW_SCHEDULER_RETENTION_S": str(args.retention_s),
        "GRAFLOW_RESULT_STORE_RETENTION_S": str(args.retention_s),
    }
    for setting in args.set:
        name, sep, value = setting.partition("=")
        if not sep or not name:
            parser.error(f"--set {setting!r}: expected NAME=VALUE")
        env[name] = value
    stack = LocalStack(workers=args.workers, task_modules=["tests.bench.soak_tasks"], redis=server, env=env)
    bus = redis.Redis.from_url(server.url)
    fx = redis.Redis.from_url(observer.url)
    tracker = RecoveryTracker(redis.Redis.from_url(server.url))
    sampler = MemorySampler(stack, server.url, args.sample_every)
    censuses: dict[str, dict[str, memory.PatternCount]] = {}
    stats: dict[str, dict[str, int]] = {}
    try:
        stack.start()
        out(f"stack up (logs in {stack.log_dir}); warming up with {warmup_runs} runs of {len(task_ids)} "
            f"tasks{' under kills' if args.kill_every else ''}\n")
        warm = Driver(stack, bus, fx, spec, task_ids, warmup_runs, args.runs_in_flight, args.run_timeout)
        drive(warm, stack, bus, rng, RecoveryTracker(bus), args.kill_every, time.monotonic())
        if warm.totals.runs_succeeded != warmup_runs:
            raise RuntimeError(f"the warm-up failed: {warm.totals.failures}")
        settle(settle_s, "warm-up done")
        sampler.sample()
        censuses["baseline"] = census(bus, sample=args.census_sample, rng=rng)
        stats["baseline"] = memory_stats(bus)

        driver = Driver(stack, bus, fx, spec, task_ids, runs, args.runs_in_flight, args.run_timeout)
        sampler.phase = LOAD
        sampler.start()
        tracker.start()
        began = time.monotonic()
        drive(driver, stack, bus, rng, tracker, args.kill_every, began)
        elapsed = time.monotonic() - began
        deadline = time.monotonic() + 60
        while tracker.open_tasks() and time.monotonic() < deadline:
            time.sleep(0.1)
        tracker.stop.set()
        tracker.join()
        sampler.sample()
        censuses["end of load"] = census(bus, sample=args.census_sample, rng=rng)
        sampler.phase = SETTLE
        settle(settle_s, "load done")
        sampler.sample()
        censuses["settled"] = census(bus, sample=args.census_sample, rng=rng)
        stats["settled"] = memory_stats(bus)
    finally:
        tracker.stop.set()
        sampler.close()
        stack.stop()
        bus.close()
        fx.close()
        server.close()
        observer.close()

    t = driver.totals
    samples = tracker.samples()
    held = sum(len(k.held) for k in tracker.kills)
    unrecovered = held - len(samples)
    kills = f"a random worker SIGKILLed every {args.kill_every:g} s" if args.kill_every else "no kills"
    out(f"\nGraflow soak: {t.tasks_submitted} tasks in {t.runs_submitted} runs of {len(task_ids)}, "
        f"{args.runs_in_flight} in flight, {args.workers} workers, {kills}, retention {args.retention_s} s\n")
    recovery = (f"{percentile(samples, 0.5):.2f} s / {percentile(samples, 0.99):.2f} s"
                f"  (kill -> held task SUCCEEDED elsewhere; n={len(samples)}, not recovered {unrecovered})")
    rows = [
        ("elapsed", f"{elapsed:.1f} s ({t.tasks_submitted / elapsed:.0f} tasks/s)"),
        ("tasks submitted", f"{t.tasks_submitted}"),
        ("runs succeeded / submitted", f"{t.runs_succeeded} / {t.runs_submitted}"
         f" (failed {t.runs_failed}, not finished {t.runs_not_finished})"),
        ("lost tasks", f"{t.lost_tasks}  (task nodes not SUCCEEDED; expected 0)"),
        ("duplicated effects on run state",
         f"{t.duplicated}  (extra NODE_SUCCEEDED in histories; expected 0)"),
        ("at-least-once re-runs", f"{t.reruns}  (task bodies executed again after a kill; not in run state)"),
        ("worker kills", f"{len(tracker.kills)}  (tasks held by the killed workers: {held})"),
        ("recovery p50 / p99", recovery),
    ]
    for label, value in rows:
        out(f"  {label:<34}{value}\n")
    if t.never_ran:
        out(f"  ANOMALY: {t.never_ran} nodes succeeded without their body being counted\n")
    for failure in t.failures[:10]:
        out(f"  ! {failure}\n")

    judged = judge(sampler.samples, workers_judged=not args.kill_every)
    lifetimes = worker_lifetimes(sampler.samples)
    used = next(r for r in judged if r.name == memory.REDIS_USED)
    settled = stats["settled"]
    verdict = redis_verdict(used.after_warmup, used.settled, censuses["baseline"], censuses["settled"],
                            key_table_bytes=settled[memory.KEY_TABLES] / max(1, settled["keys.count"]))
    found = findings(censuses["baseline"], censuses["settled"])
    flat = all(r.flat for r in judged if r.flat is not None)
    out(f"\n  memory: {len(sampler.samples)} samples, one every {args.sample_every:g} s; after warm-up ="
        f" {warmup_runs} warm-up runs + {settle_s:.0f} s; end = when the last run ended; settled = "
        f"{settle_s:.0f} s later\n")
    out(memory.rows_table(judged))
    if args.kill_every:
        out(memory.lifetimes_table(lifetimes))
    back = "back to baseline" if verdict.back_to_baseline else "NOT back"
    out(f"  redis used_memory settled vs baseline: {verdict.settled_mib:.2f} vs {verdict.baseline_mib:.2f} "
        f"MiB; records kept on purpose grew {verdict.kept_delta_mib:.2f} MiB; unexplained "
        f"{verdict.unexplained_mib:+.2f} MiB: {back}\n")
    out("  MEMORY STATS (bytes)      " + "".join(f"{point:>14}" for point in stats) + "\n")
    for name in stats["baseline"]:
        out(f"    {name:<24}" + "".join(f"{stats[point][name]:>14}" for point in stats) + "\n")
    out(memory.census_table(censuses))
    for finding in found:
        out(f"  FINDING {finding.pattern}: {finding.problem}\n")
    met = flat and verdict.back_to_baseline and not found
    out(f"  memory target (services flat within {memory.FLAT_TOLERANCE:.0%}, Redis back to baseline, "
        f"nothing unexplained left): {'met' if met else 'NOT met'}\n")

    if args.json:
        figures = {
            "commit": commit(), "args": vars(args), "elapsed_s": elapsed, "totals": t.__dict__,
            "kills": len(tracker.kills), "tasks_held_by_killed": held,
            "recovery_s": {"p50": percentile(samples, 0.5), "p99": percentile(samples, 0.99),
                           "n": len(samples)},
            "memory": {
                "rows": [r.__dict__ for r in judged], "worker_lifetimes": lifetimes.__dict__,
                "redis": verdict.__dict__, "memory_stats": stats,
                "census": {point: {p: c.as_json() for p, c in counts.items()}
                           for point, counts in censuses.items()},
                "findings": [f.__dict__ for f in found], "target_met": met,
                "samples": [s.as_json() for s in sampler.samples],
            },
        }
        Path(args.json).write_text(json.dumps(figures, indent=2))
    ok = t.lost_tasks == 0 and t.duplicated == 0 and t.runs_not_finished == 0 and t.runs_failed == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
