"""Benchmark: how fast the console's pages answer with 10,000 runs in the scheduler.

    ./pants run tests/bench/console_pages.py -- [--runs 10000] [--repeat 30] [--concurrency 64]

Starts a private redis-server, the four services and the console as processes (no worker: the
runs' first task waits in a queue nobody reads, so every run stays as it was seeded), one token
per role. Seeds ``--runs`` one-task runs through ``SubmitRun`` (``--concurrency`` calls in flight
on one asyncio channel), spread over five workflow names and ten ``team`` labels, and cancels
every tenth one, so that each filter below selects a real share of them. Then, signed in as a
viewer (the session cookie of the pages) or with the viewer's bearer token (the JSON API), it GETs
each page ``--repeat`` times after a warm-up, one request at a time, and prints p50, p95 and max
per page against the goal of issue 11: every page within 200 ms for a list of 10,000 runs.
Nothing is asserted: the machines drift 2x between runs (docs/testing.md), so compare the rows of
one run.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

import grpc
import httpx

from graflow import workflow
from graflow.devstack import LocalStack
from graflow_api.v1 import scheduler_pb2, scheduler_pb2_grpc
from graflow_runtime.access import Role
from tests.bench.cost import median, percentile
from tests.bench.tasks import noop

GOAL_MS = 200.0
WORKFLOWS = [f"bench-{letter}" for letter in "abcde"]
TEAMS = 10
CANCEL_EVERY = 10
WARMUP = 3
NEXT_PAGE = re.compile(r'id="next-page"[^>]*href="([^"]+)"|href="([^"]+)"[^>]*id="next-page"')


def specs() -> dict[str, scheduler_pb2.SubmitRunRequest]:
    """One SubmitRun request per workflow name (a one-task workflow each)."""
    requests = {}
    for name in WORKFLOWS:
        with workflow(name) as wf:
            noop(task_id="wait")
        requests[name] = scheduler_pb2.SubmitRunRequest(spec=wf.spec())
    return requests


async def seed(stack: LocalStack, runs: int, concurrency: int) -> tuple[list[str], float]:
    """Submit ``runs`` runs and cancel every ``CANCEL_EVERY``-th; returns their ids (in submit
    order) and the seconds it took."""
    metadata = (("authorization", f"Bearer {stack.token_of(Role.CLIENT)}"),)
    templates = specs()
    ids: list[str] = [""] * runs
    began = time.perf_counter()
    async with grpc.aio.insecure_channel(stack.scheduler_address) as channel:
        scheduler = scheduler_pb2_grpc.SchedulerStub(channel)
        slots = asyncio.Semaphore(concurrency)

        async def submit(index: int) -> None:
            request = scheduler_pb2.SubmitRunRequest()
            request.CopyFrom(templates[WORKFLOWS[index % len(WORKFLOWS)]])
            request.idempotency_key = f"bench-console-{index}"
            request.labels.update({"team": f"t{index % TEAMS}", "batch": str(index // 1000)})
            async with slots:
                ids[index] = (await scheduler.SubmitRun(request, metadata=metadata, timeout=60)).run_id
                if index % CANCEL_EVERY == 0:
                    cancel = scheduler_pb2.CancelRunRequest(run_id=ids[index], reason="seeded canceled")
                    await scheduler.CancelRun(cancel, metadata=metadata, timeout=60)

        await asyncio.gather(*(submit(i) for i in range(runs)))
    return ids, time.perf_counter() - began


def sign_in(pages: httpx.Client, token: str) -> None:
    """A session cookie of the console, as the login form gets one (a form from its own origin)."""
    page = pages.post("/login", data={"token": token, "next": "/runs"},
                      headers={"origin": str(pages.base_url).rstrip("/")}, follow_redirects=True)
    if page.status_code != 200 or page.url.path.startswith("/login"):
        raise RuntimeError(f"signing in to the console failed: HTTP {page.status_code} at {page.url}")


def minute(ms: int) -> str:
    """A ``datetime-local`` value (the filter form's fields; the console reads them as UTC)."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M")


def timed(get: Callable[[], httpx.Response], repeat: int) -> tuple[list[float], httpx.Response]:
    """Milliseconds of ``repeat`` GETs after ``WARMUP`` untimed ones; fails on a non-200 answer."""
    response = get()
    for _ in range(WARMUP - 1):
        get()
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        response = get()
        times.append((time.perf_counter() - began) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"GET {response.url}: HTTP {response.status_code}: {response.text[:300]}")
    return times, response


def rows_of(response: httpx.Response) -> int:
    """Runs shown: rows of the runs table, or runs of the JSON API's answer."""
    if response.headers.get("content-type", "").startswith("application/json"):
        return len(response.json().get("runs", []))
    return response.text.count('class="run-row')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    out = sys.stdout.write

    stack = LocalStack(workers=0, task_modules=["tests.bench.tasks"], role_tokens=True, console=True)
    try:
        stack.start()
        ids, seconds = asyncio.run(seed(stack, args.runs, args.concurrency))
        out(f"seeded {args.runs} runs in {seconds:.1f} s ({args.runs / seconds:.0f} runs/s), "
            f"{len(range(0, args.runs, CANCEL_EVERY))} of them canceled\n")
        token = stack.token_of(Role.VIEWER)
        with httpx.Client(base_url=stack.console_url, timeout=30) as pages, \
                httpx.Client(base_url=stack.console_url, timeout=30,
                             headers={"authorization": f"Bearer {token}"}) as api:
            sign_in(pages, token)
            with stack.client(timeout=30) as client:
                created = sorted(client.get_run(ids[i]).created_at_ms for i in (0, len(ids) // 2, -1))
            first = pages.get("/runs")
            found = NEXT_PAGE.search(first.text)
            if not found:
                raise RuntimeError("the runs page has no #next-page link with 10,000 runs")
            page_two = (found.group(1) or found.group(2)).replace("&amp;", "&")
            window = {"created_after": minute(created[0]), "created_before": minute(created[1] + 60_000)}
            middle = ids[len(ids) // 2]
            measured: list[tuple[str, Callable[[], httpx.Response]]] = [
                ("GET /runs (first page; / redirects)", lambda: pages.get("/runs")),
                ("GET /runs?status=CANCELED", lambda: pages.get("/runs", params={"status": "CANCELED"})),
                ("GET /runs?workflow=bench-c", lambda: pages.get("/runs", params={"workflow": "bench-c"})),
                ("GET /runs?label=team=t3", lambda: pages.get("/runs", params={"label": "team=t3"})),
                ("GET /runs?created_after&before", lambda: pages.get("/runs", params=window)),
                ("GET /runs page 2 (#next-page)", lambda: pages.get(page_two)),
                ("GET /runs/counts (live counts)", lambda: pages.get("/runs/counts")),
                ("GET /runs/{id} (run page)", lambda: pages.get(f"/runs/{middle}")),
                ("GET /api/v1/runs", lambda: api.get("/api/v1/runs")),
                ("GET /api/v1/runs?label=team=t3",
                 lambda: api.get("/api/v1/runs", params={"label": "team=t3", "status": "RUNNING"})),
            ]
            results = []
            for label, get in measured:
                times, last = timed(get, args.repeat)
                results.append((label, times, rows_of(last) if "/runs/{id}" not in label else None))
    finally:
        stack.stop()

    out(f"\nConsole pages with {args.runs} runs ({args.repeat} requests each after {WARMUP} warm-up, "
        f"one at a time, signed in as viewer); goal: each within {GOAL_MS:.0f} ms\n")
    out(f"{'page':<36}{'rows':>6}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}  goal\n")
    for label, times, rows in results:
        p95 = percentile(times, 0.95)
        verdict = "met" if max(times) <= GOAL_MS else ("p95 met" if p95 <= GOAL_MS else "NOT met")
        out(f"{label:<36}{'' if rows is None else rows:>6}{median(times):>9.1f}{p95:>9.1f}"
            f"{max(times):>9.1f}  {verdict}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
