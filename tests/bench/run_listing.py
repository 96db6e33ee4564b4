"""Benchmark: how long ListRuns and CountRuns take over 10,000 retained runs (issue 11: the
console's runs page must answer within 200 ms), for each kind of filter.

    ./pants run tests/bench/run_listing.py -- [--runs 10000] [--limit 50] [--repeat 20]

A private Redis holds ``--runs`` runs made by the scheduler's own create_run.lua (three workflow
names, a label on one run in ten, a quarter of them canceled), created over the last hour. Each
listing is the scheduler's RunReader (what the ListRuns handler calls; the gRPC hop adds well under
a millisecond on one host) asked for the first page of ``--limit`` runs; printed: its p50 and max
over ``--repeat`` calls and how many runs the page held. Timings are printed, not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from graflow_runtime.local_redis import LocalRedis
from graflow_runtime.redis_client import connect
from graflow_runtime.runids import new_run_id

from graflow_scheduler.graph.compiler import compile_spec
from graflow_scheduler.state.reader import RunFilters, RunReader
from graflow_scheduler.state.store import RunStore
from graflow_scheduler.testing.specs import spec

NAMES = ("etl", "fanout", "nightly")


async def _fill(store: RunStore, runs: int, now_ms: int) -> int:
    """``runs`` runs created over the last hour; returns the creation time of the middle one."""
    plans = {name: compile_spec(spec(["a", "b"], ["a>b"], name=name)) for name in NAMES}
    for i in range(runs):
        run_id = new_run_id()
        name = NAMES[i % len(NAMES)]
        labels = {"team": "data"} if i % 10 == 0 else {}
        created = now_ms - 3_600_000 + i * 3_600_000 // runs
        await store.create_run(plans[name], run_id=run_id, graph_hash="0" * 64, now_ms=created, labels=labels)
        if i % 4 == 0:
            await store.cancel_run(run_id, "bench", now_ms=created + 1)
    return now_ms - 1_800_000


async def _time(call: Callable[[], Awaitable[int]], repeat: int) -> tuple[float, float, int]:
    took, size = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        size = await call()
        took.append((time.perf_counter() - start) * 1000)
    return statistics.median(took), max(took), size


async def _measure(url: str, runs: int, limit: int, repeat: int) -> None:
    redis = connect(url)
    store, reader = RunStore(redis, retention_s=86_400), RunReader(redis)
    await store.load_scripts()
    middle = await _fill(store, runs, int(time.time() * 1000))

    def listing(status: str | None = None, **filters: object) -> Callable[[], Awaitable[int]]:
        async def call() -> int:
            page, _ = await reader.list_runs(
                limit=limit, status=status, page_token="", filters=RunFilters(**filters)  # type: ignore[arg-type]
            )
            return len(page)

        return call

    async def count() -> int:
        return (await reader.count_runs())[1]

    cases: dict[str, Callable[[], Awaitable[int]]] = {
        "all": listing(),
        "status CANCELED": listing("CANCELED"),
        "workflow nightly": listing(workflow_name="nightly"),
        "label team=data (1 in 10)": listing(labels={"team": "data"}),
        "older half (time window)": listing(created_before_ms=middle),
        "status RUNNING, label, window": listing(
            "RUNNING", labels={"team": "data"}, created_before_ms=middle
        ),
        "CountRuns": count,
    }
    print(f"{runs:,} runs, pages of {limit}, {repeat} calls each")
    for name, call in cases.items():
        p50, worst, size = await _time(call, repeat)
        print(f"  {name:<32} p50 {p50:6.1f} ms   max {worst:6.1f} ms   ({size} runs)")
    await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, LocalRedis(Path(tmp)) as redis_server:
        asyncio.run(_measure(redis_server.url, args.runs, args.limit, args.repeat))


if __name__ == "__main__":
    main()
