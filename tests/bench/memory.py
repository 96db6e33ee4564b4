"""Memory of a stack over a long run (issue 13: "memory flat under a 1,000,000-task soak").

- :class:`MemorySampler` samples, every few seconds, the RSS of every service and of every live
  worker, Redis's RSS and ``used_memory`` (``INFO memory``), tagged with the phase of the run.
- :func:`judge` turns the samples into one row per process: after warm-up, max, end of the load,
  settled, the largest deviation from the after-warm-up value and "flat?" against the target
  (within :data:`FLAT_TOLERANCE` of the after-warm-up value at every sample). Workers that are
  killed and replaced are not judged: :func:`worker_lifetimes` gives the distribution of their RSS
  over their lifetimes instead.
- :func:`census` counts what Redis holds by key pattern (run ids, worker ids, hashes and keys
  folded into ``{R}`` and ``*``): keys, elements and bytes (``MEMORY USAGE`` of every key, or of a
  random sample extrapolated when a pattern has more keys than ``sample``), plus each stream's
  consumer groups, consumers and pending entries. :data:`KEPT` says, per pattern, whether it must
  be gone once retention has passed or is kept on purpose (and what bounds it):
  :func:`redis_verdict` judges ``used_memory`` against its baseline with the kept records counted
  apart, and :func:`findings` names every pattern that is left or grew without an explanation.
"""

from __future__ import annotations

import random
import re
import statistics
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import redis

from graflow.devstack import SERVERS, LocalStack
from graflow_runtime import keys

# The target: RSS within 10% of its value after warm-up; Redis used_memory back to its baseline
# (with the same tolerance) once retention has passed, kept records counted apart.
FLAT_TOLERANCE = 0.10
MIB = 2**20
REDIS_RSS = "redis (rss)"
REDIS_USED = "redis used_memory"
WARMED, LOAD, SETTLE = "warmed", "load", "settle"


def rss_mib(pid: int | None) -> float:
    """Resident set size of a process in MiB (NaN when it is gone)."""
    if pid is None:
        return float("nan")
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@dataclass
class Sample:
    t: float  # seconds since the sampler was created
    phase: str
    services: dict[str, float]  # name -> RSS MiB (Redis's RSS and used_memory included)
    workers: dict[str, float]  # "worker-<i>/<pid>" -> RSS MiB of the live workers

    def as_json(self) -> dict[str, object]:
        return {"t": round(self.t, 2), "phase": self.phase, "services": self.services,
                "workers": self.workers}


class MemorySampler(threading.Thread):
    """Samples every ``interval_s`` in the background (and at once with :meth:`sample`); the phase
    of the run is whatever ``phase`` holds at the moment."""

    def __init__(self, stack: LocalStack, url: str, interval_s: float) -> None:
        super().__init__(name="soak-memory", daemon=True)
        self.stack = stack
        self.bus = redis.Redis.from_url(url)
        self.interval_s = interval_s
        self.phase = WARMED
        self.samples: list[Sample] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._began = time.monotonic()

    def sample(self) -> Sample:
        services = {name: rss_mib(self.stack.servers[name].pid) for name in SERVERS}
        process = self.stack.redis.process if self.stack.redis else None
        services[REDIS_RSS] = rss_mib(process.pid if process else None)
        services[REDIS_USED] = int(self.bus.info("memory")["used_memory"]) / MIB
        workers = {}
        for worker in list(self.stack.workers):
            pid = worker.pid
            if worker.running and pid is not None:
                workers[f"{worker.name}/{pid}"] = rss_mib(pid)
        sample = Sample(time.monotonic() - self._began, self.phase, services,
                        {k: v for k, v in workers.items() if v == v})
        with self._lock:
            self.samples.append(sample)
        return sample

    def run(self) -> None:
        while not self.stop.wait(self.interval_s):
            self.sample()

    def close(self) -> None:
        self.stop.set()
        if self.is_alive():
            self.join()
        self.bus.close()


@dataclass
class Row:
    name: str
    after_warmup: float
    max: float
    end: float
    settled: float
    max_deviation_pct: float  # signed: the sample farthest from after_warmup
    flat: bool | None  # None: not judged (Redis RSS, used_memory: see redis_verdict)


def _row(name: str, base: float, later: list[tuple[str, float]], judged: bool) -> Row:
    values = [v for _, v in later if v == v]
    load = [v for phase, v in later if phase == LOAD and v == v]
    deviations = [(v - base) / base * 100 for v in values] if base else []
    worst = max(deviations, key=abs) if deviations else float("nan")
    return Row(
        name,
        base,
        max(values, default=float("nan")),
        load[-1] if load else float("nan"),
        values[-1] if values else float("nan"),
        worst,
        (abs(worst) <= FLAT_TOLERANCE * 100) if judged and deviations else None,
    )


def judge(samples: list[Sample], *, workers_judged: bool) -> list[Row]:
    """One row per service (and per worker when ``workers_judged``: a run without kills), from
    the first sample (taken after the warm-up) against every later one."""
    if not samples:
        return []
    base, later = samples[0], samples[1:]
    rows = [
        _row(name, base.services[name], [(s.phase, s.services.get(name, float("nan"))) for s in later],
             judged=name not in (REDIS_RSS, REDIS_USED))
        for name in base.services
    ]
    if workers_judged:
        for name, value in base.workers.items():
            rows.append(_row(name, value, [(s.phase, s.workers[name]) for s in later if name in s.workers],
                             judged=True))
    return rows


@dataclass
class Lifetimes:
    workers: int
    first: list[float]  # each worker's first sample (MiB)
    peak: list[float]  # each worker's largest sample
    growth_pct: list[float]  # peak over first sample, per worker sampled at least twice
    samples_per_worker: float


def worker_lifetimes(samples: list[Sample]) -> Lifetimes:
    """Each worker's RSS over its lifetime (workers come and go: judged as a distribution)."""
    series: dict[str, list[float]] = {}
    for sample in samples:
        for name, value in sample.workers.items():
            series.setdefault(name, []).append(value)
    return Lifetimes(
        workers=len(series),
        first=[v[0] for v in series.values()],
        peak=[max(v) for v in series.values()],
        growth_pct=[(max(v) - v[0]) / v[0] * 100 for v in series.values() if len(v) > 1 and v[0]],
        samples_per_worker=statistics.fmean(len(v) for v in series.values()) if series else 0.0,
    )


# ---- Redis: what is left, by key pattern ----
RETAINED, KEPT_ON_PURPOSE, STANDING = "retained", "kept", "standing"

# Pattern -> (kind, what it is and what bounds it). RETAINED: a run's key, gone a retention period
# after the run ended (anything of this kind left once settled is a finding). KEPT_ON_PURPOSE:
# outlives the runs by design, with its bound. STANDING: the stack's own structures, whose size
# depends on what is in flight, not on how many tasks went through.
KEPT: dict[str, tuple[str, str]] = {
    **{pattern: (RETAINED, "run state, expires retention_s after the run ended (scheduler)")
       for pattern in ("gf:run:{R}", "gf:run:{R}:state", "gf:run:{R}:attempt", "gf:run:{R}:join",
                       "gf:run:{R}:errors", "gf:run:{R}:events", "gf:run:{R}:dyn", "gf:run:{R}:cycle",
                       "gf:run:{R}:waits", "gf:run:{R}:children")},
    **{pattern: (RETAINED, "results / channels / checkpoints, expire retention_s after the last "
                           "write once the run ended (result-store)")
       for pattern in ("gf:res:{R}", "gf:res:{R}:attempt", "gf:chan:{R}", "gf:chan:{R}:exp",
                       "gf:ckpt:{R}")},
    "gf:idem:*": (RETAINED, "idempotency key of a run, expires with it"),
    "gf:dispatch:{R}": (KEPT_ON_PURPOSE,
                        "node -> highest attempt dispatched, per run: keeps dispatch idempotent; "
                        "expires GRAFLOW_SCHEDULER_RETENTION_S after the run's last dispatch by the "
                        "scheduler (GRAFLOW_COORDINATOR_DISPATCH_RECORD_TTL_S by Dispatch)"),
    keys.RUNS_ENDED: (KEPT_ON_PURPOSE, "one entry per run end, capped at ~100,000 entries "
                                       "(XADD MAXLEN ~): workers read run ends from it"),
    keys.DEAD_LETTERS_STREAM: (KEPT_ON_PURPOSE, "dead letters until replayed or trimmed: capped at "
                                                "GRAFLOW_COORDINATOR_DEAD_LETTER_MAXLEN (~100,000)"),
    "gf:graph:*": (KEPT_ON_PURPOSE, "workflow graph blobs, one per distinct graph, never expire "
                                    "(content-addressed, shared by runs)"),
    keys.RUNS_INDEX: (RETAINED, "run listing: an entry per run, pruned by the scheduler's sweep "
                                "once the run's state expired"),
    keys.ACTIVE_RUNS: (STANDING, "runs not ended (the recovery sweep's set)"),
    keys.OUTCOMES_STREAM: (STANDING, "outcomes, trimmed below the scheduler group's oldest pending "
                                     "entry every sweep period"),
    **{pattern: (STANDING, "queue lane stream, trimmed below the workers group's oldest pending "
                           "entry (MINID) every GRAFLOW_COORDINATOR_QUEUE_TRIM_INTERVAL_MS")
       for pattern in ("gf:q:*", "gf:qh:*")},
    keys.WORKERS_INDEX: (STANDING, "live workers (zset)"),
    "gf:worker:*": (STANDING, "a live worker's info hash"),
    keys.RETRY_TIMER: (STANDING, "deliveries waiting for their retry time"),
    keys.RETRY_WAKE: (STANDING, "the retry timers' wake-up stream, one entry kept"),
}
# A standing structure may hold this many more elements once settled than at the baseline (an
# approximate MINID trim leaves up to a stream node's worth of entries).
STANDING_SLACK = 1000
# Keys named by an id without a hash tag: the id is folded into "*".
_ID_FAMILIES = tuple(prefix.rstrip("*") for prefix in ("gf:idem:*", "gf:graph:*", "gf:worker:*", "gf:q:*",
                                                         "gf:qh:*"))
_TAG = re.compile(r"\{[^}]*\}")


def pattern_of(key: str) -> str:
    folded = _TAG.sub("{R}", key)
    for prefix in _ID_FAMILIES:
        if folded.startswith(prefix):
            return prefix + "*"
    return folded


@dataclass
class PatternCount:
    keys: int = 0
    elements: int = 0  # stream entries, hash fields, zset/set members, list items (1 per string)
    bytes: int = 0  # MEMORY USAGE, extrapolated from ``sampled`` keys
    sampled: int = 0
    consumers: int = 0  # streams: consumers over their groups
    pending: int = 0  # streams: pending entries over their groups

    def as_json(self) -> dict[str, int]:
        return dict(self.__dict__)


_LENGTH = {"stream": "XLEN", "hash": "HLEN", "zset": "ZCARD", "set": "SCARD", "list": "LLEN"}


def census(
    bus: redis.Redis, *, sample: int = 200, rng: random.Random | None = None
) -> dict[str, PatternCount]:
    """What Redis holds, by key pattern (see the module's docstring)."""
    rng = rng or random.Random(0)
    names = [k.decode() for k in bus.scan_iter(count=1000)]
    types = _pipelined(bus, (("TYPE", name) for name in names))
    by_pattern: dict[str, list[tuple[str, str]]] = {}
    for name, kind in zip(names, types, strict=True):
        kind = kind.decode() if isinstance(kind, bytes) else kind
        by_pattern.setdefault(pattern_of(name), []).append((name, kind))
    out: dict[str, PatternCount] = {}
    for pattern, members in sorted(by_pattern.items()):
        count = PatternCount(keys=len(members))
        lengths = _pipelined(bus, ((_LENGTH[kind], name) if kind in _LENGTH else ("EXISTS", name)
                                   for name, kind in members))
        count.elements = sum(int(n) for n in lengths)
        chosen = members if len(members) <= sample else rng.sample(members, sample)
        sizes = [int(s or 0) for s in _pipelined(bus, (("MEMORY", "USAGE", name, "SAMPLES", "0")
                                                       for name, _ in chosen))]
        count.sampled = len(chosen)
        count.bytes = round(statistics.fmean(sizes) * len(members)) if sizes else 0
        for name, kind in members:
            if kind == "stream":
                for group in bus.xinfo_groups(name):
                    count.consumers += int(group["consumers"])
                    count.pending += int(group["pending"])
        out[pattern] = count
    return out


def _pipelined(bus: redis.Redis, commands: Iterable[tuple[object, ...]], chunk: int = 1000) -> list[object]:
    results: list[object] = []
    pending = list(commands)
    for start in range(0, len(pending), chunk):
        pipe = bus.pipeline(transaction=False)
        for command in pending[start : start + chunk]:
            pipe.execute_command(*command)
        results.extend(pipe.execute())
    return results


KEY_TABLES = "db.0 key tables"


def memory_stats(bus: redis.Redis) -> dict[str, int]:
    """The parts of ``MEMORY STATS`` that say where used_memory goes besides the keys' values, and
    the bucket arrays of the database's key and expiry tables (:data:`KEY_TABLES`), which ``MEMORY
    USAGE`` leaves out."""
    stats = bus.memory_stats()
    out = {name: int(stats.get(name, 0)) for name in
           ("total.allocated", "startup.allocated", "dataset.bytes", "overhead.total", "clients.normal",
            "lua.caches", "functions.caches", "keys.count")}
    db = stats.get("db.0") or {}
    out[KEY_TABLES] = int(db.get("overhead.hashtable.main", 0)) + int(db.get("overhead.hashtable.expires", 0))
    return out


@dataclass
class RedisVerdict:
    baseline_mib: float
    settled_mib: float
    kept_delta_mib: float  # growth of the records kept on purpose (census bytes)
    unexplained_mib: float  # used_memory's growth minus kept_delta
    back_to_baseline: bool


def redis_verdict(baseline_used: float, settled_used: float, before: Mapping[str, PatternCount],
                  after: Mapping[str, PatternCount], *, key_table_bytes: float = 0.0) -> RedisVerdict:
    """used_memory once retention has passed against its baseline, the growth of records kept on
    purpose (counted by the census, plus ``key_table_bytes`` per key they added: their share of
    the key and expiry tables) set apart; back to baseline when what is left is within the
    tolerance of the baseline."""
    kept = {p for p, (kind, _) in KEPT.items() if kind == KEPT_ON_PURPOSE}
    grown = sum(after[p].bytes + after[p].keys * key_table_bytes for p in kept if p in after) - sum(
        before[p].bytes + before[p].keys * key_table_bytes for p in kept if p in before
    )
    unexplained = settled_used - baseline_used - grown / MIB
    return RedisVerdict(baseline_used, settled_used, grown / MIB, unexplained,
                        unexplained <= FLAT_TOLERANCE * baseline_used)


@dataclass
class Finding:
    pattern: str
    problem: str


def findings(before: Mapping[str, PatternCount], after: Mapping[str, PatternCount]) -> list[Finding]:
    """Patterns left once retention passed although they should be gone, and patterns that grew
    without being kept on purpose."""
    out = []
    for pattern, count in after.items():
        kind, _ = KEPT.get(pattern, ("", ""))
        was = before.get(pattern, PatternCount())
        if kind == RETAINED and count.keys > was.keys:
            out.append(Finding(pattern, f"{count.keys - was.keys} more keys than at the baseline "
                                        f"({was.keys} -> {count.keys}) although retention has passed"))
        if kind == RETAINED and count.elements > was.elements and count.keys == was.keys:
            out.append(Finding(pattern, f"{was.elements} -> {count.elements} elements although "
                                        "retention has passed"))
        if not kind and count.bytes > was.bytes:
            out.append(Finding(pattern, f"not a known key pattern, {was.keys} -> {count.keys} keys, "
                                        f"{was.bytes} -> {count.bytes} bytes"))
        if kind == STANDING and count.elements > was.elements + STANDING_SLACK:
            out.append(Finding(pattern, f"{was.elements} -> {count.elements} elements with nothing in "
                                        "flight"))
        if kind == STANDING and count.consumers > was.consumers:
            out.append(Finding(pattern, f"consumers {was.consumers} -> {count.consumers} with nothing "
                                        "in flight"))
    return out


# ---- printing ----
def rows_table(rows: list[Row]) -> str:
    lines = [f"  {'memory (MiB)':<26}{'after warm-up':>14}{'max':>9}{'end':>9}{'settled':>9}"
             f"{'max dev':>9}  flat? (<= {FLAT_TOLERANCE:.0%})"]
    for r in rows:
        verdict = "-" if r.flat is None else ("yes" if r.flat else "NO")
        lines.append(f"  {r.name:<26}{r.after_warmup:>14.1f}{r.max:>9.1f}{r.end:>9.1f}{r.settled:>9.1f}"
                     f"{r.max_deviation_pct:>+8.1f}%  {verdict}")
    return "\n".join(lines) + "\n"


def _quantiles(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    pick = [ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.0, 0.5, 0.9)]
    return " / ".join(f"{v:.1f}" for v in [*pick, ordered[-1]])


def lifetimes_table(life: Lifetimes) -> str:
    return (f"  workers over their lifetimes ({life.workers} processes, {life.samples_per_worker:.1f} "
            "samples each), min / p50 / p90 / max:\n"
            f"    first sample (MiB)      {_quantiles(life.first)}\n"
            f"    lifetime peak (MiB)     {_quantiles(life.peak)}\n"
            f"    peak over first (%)     {_quantiles(life.growth_pct)}\n")


def census_table(censuses: Mapping[str, Mapping[str, PatternCount]]) -> str:
    """Keys / elements / KiB per pattern at each point, then what each pattern is."""
    points = list(censuses)
    patterns = sorted({p for c in censuses.values() for p in c})
    head = "".join(f"{point:>30}" for point in points)
    lines = [f"  {'redis key pattern':<24}{head}",
             f"  {'':<24}" + f"{'keys / elements / KiB':>30}" * len(points)]
    for pattern in patterns:
        cells = []
        for point in points:
            c = censuses[point].get(pattern)
            cell = "-" if c is None else f"{c.keys} / {c.elements} / {c.bytes / 1024:.0f}"
            cells.append(f"{cell:>30}")
        lines.append(f"  {pattern:<24}" + "".join(cells))
    groups = [(p, censuses[points[-1]][p]) for p in patterns if p in censuses[points[-1]]]
    streams = [f"{p}: {c.consumers} consumers, {c.pending} pending" for p, c in groups if c.consumers]
    if streams:
        lines.append(f"  streams at '{points[-1]}': " + "; ".join(streams))
    lines.append("  what each pattern is:")
    for pattern in patterns:
        kind, why = KEPT.get(pattern, ("UNKNOWN", "not a known key pattern"))
        lines.append(f"    {pattern:<22} [{kind}] {why}")
    return "\n".join(lines) + "\n"
