"""Fuzz a live stack: ``./pants run tests/fuzz/fuzz.py -- --inputs 1000000``.

Starts a LocalStack (its own redis-server, the three servers and ``--workers`` workers running
``tests.fuzz.tasks``), opens a few runs that wait for feedback (so that answers reach open
requests), then sends ``--inputs`` generated inputs (``graflow_runtime.testing.hostile``, one
``random.Random`` per input seeded with ``<seed>:<index>``) to every surface of ``surfaces.py``,
``--concurrency`` at a time. At the end it waits for the bus entries to be consumed and prints:
inputs tried per surface and their answers, the rate, crashes (UNKNOWN, INTERNAL, UNAVAILABLE or
another undocumented code, a refusal without a message, a process that died, an exception in a
service's log), hangs (no answer within 10 s; bus entries still unconsumed after
``--drain-timeout``), the slowest answer with its input, and the peak RSS of every process. Exit
code 1 when there was a crash or a hang (the stack's logs are kept, their directory printed), 0
otherwise. The full input of every crash and hang is written to ``findings.txt`` in that directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import redis as sync_redis
import redis.asyncio as aioredis

from graflow.devstack import LocalStack
from graflow_api.v1 import coordinator_pb2, scheduler_pb2, workflow_pb2
from graflow_runtime.signing import BusKeys
from tests.fuzz.surfaces import (
    BUS,
    SURFACES,
    TIMEOUT_S,
    Input,
    Pools,
    bus_fields,
    bus_signer,
    draw,
    open_channels,
    peak_rss,
    processes,
    stack_problems,
    stubs_of,
    verdict,
)

# Share of the inputs per surface. The bus surfaces are fewer: every envelope that decodes is run
# by a worker, which is slower than answering a call.
WEIGHTS = {"submit": 3, "channel": 4, "feedback": 2, "deadletters": 2, "envelope": 1, "outcome": 2,
           "other": 2}
FEEDBACK_KINDS = ("approval", "text", "selection", "multi_selection", "custom")
FINDINGS_SHOWN = 20


@dataclass
class Tally:
    tried: Counter[str] = field(default_factory=Counter)
    seconds: Counter[str] = field(default_factory=Counter)  # answer times added up, per surface
    codes: dict[str, Counter[str]] = field(default_factory=dict)
    findings: list[tuple[str, str, str, Input]] = field(default_factory=list)  # kind, code, details, input
    slowest: tuple[float, Input | None] = (0.0, None)

    def record(self, item: Input, code: str, seconds: float, problem: str | None, details: str) -> None:
        self.tried[item.surface] += 1
        self.seconds[item.surface] += seconds
        self.codes.setdefault(item.surface, Counter())[code] += 1
        if problem:
            self.findings.append((problem, code, details, item))
        if seconds > self.slowest[0]:
            self.slowest = (seconds, item)

    def count(self, kind: str) -> int:
        return sum(1 for finding in self.findings if finding[0] == kind)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs to send (default 100,000)")
    parser.add_argument("--concurrency", type=int, default=64, help="inputs in flight at once")
    parser.add_argument("--seed", default="1", help="seed of the generated inputs")
    parser.add_argument("--workers", type=int, default=1, help="worker processes of the stack")
    parser.add_argument("--signing", action="store_true",
                        help="the stack signs its bus (LocalStack(signing=True)); 80%% of the bus inputs "
                        "are signed with its key")
    parser.add_argument("--drain-timeout", type=float, default=120.0,
                        help="seconds the stack may take to consume the bus entries at the end")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    return parser.parse_args(argv)


async def open_waits(stubs: dict[str, object], pools: Pools) -> None:
    """Runs whose node waits for feedback of each kind; their run ids and requests go to ``pools``."""
    for kind in FEEDBACK_KINDS:
        for _ in range(4):
            spec = workflow_pb2.WorkflowSpec(name="fuzz-wait")
            spec.nodes.add(id="ask", task_type="ask", args_json=json.dumps({"kind": kind}).encode())
            request = scheduler_pb2.SubmitRunRequest(spec=spec)
            reply = await stubs["scheduler"].SubmitRun(request, timeout=TIMEOUT_S)
            pools.runs.append(reply.run_id)
    await refresh(stubs, pools, want_waits=len(pools.runs))


async def stack_pools(stack: LocalStack) -> Pools:
    """Pools of a stack where runs wait for feedback (``open_waits``)."""
    pools = Pools()
    channels = open_channels(stack, grpc.aio.insecure_channel)
    try:
        await open_waits(stubs_of(channels), pools)
    finally:
        for channel in channels.values():
            await channel.close()
    return pools


async def refresh(stubs: dict[str, object], pools: Pools, want_waits: int = 0) -> None:
    """Pools of open feedback requests and dead-letter ids, read again (``want_waits``: wait up to
    30 s until that many requests are open)."""
    deadline = time.monotonic() + 30
    while True:
        pending = await stubs["scheduler"].ListFeedback(scheduler_pb2.ListFeedbackRequest(limit=200),
                                                        timeout=TIMEOUT_S)
        if len(pending.requests) >= want_waits or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    if pending.requests:
        pools.waits = [(r.run_id, r.request_id) for r in pending.requests]
    letters = await stubs["coordinator"].ListDeadLetters(coordinator_pb2.ListDeadLettersRequest(limit=200),
                                                         timeout=TIMEOUT_S)
    if letters.dead_letters:
        pools.dead_letters = [letter.id for letter in letters.dead_letters]


async def send(item: Input, stubs: dict[str, object], redis: aioredis.Redis, signer: BusKeys,
               tally: Tally) -> None:
    started = time.perf_counter()
    if item.service == "bus":
        await redis.xadd(item.method, bus_fields(item, signer))
        tally.record(item, "appended", time.perf_counter() - started, None, "")
        return
    try:
        await getattr(stubs[item.service], item.method)(item.request, timeout=TIMEOUT_S)
        code, details = grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as exc:
        code, details = exc.code(), exc.details() or ""
    tally.record(item, code.name, time.perf_counter() - started, verdict(code, details), details)


async def bus_backlog(redis: aioredis.Redis, timeout_s: float) -> dict[str, int]:
    """Entries of each bus stream its consumer group has not read or not acknowledged, once both
    are 0 or ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        backlog = {}
        for surface, (stream, group, _field, _kind) in BUS.items():
            groups = {g["name"].decode(): g for g in await redis.xinfo_groups(stream)} if await redis.exists(
                stream) else {}
            info = groups.get(group, {})
            backlog[surface] = int(info.get("lag") or 0) + int(info.get("pending") or 0)
        if not any(backlog.values()) or time.monotonic() > deadline:
            return backlog
        await asyncio.sleep(0.5)


async def fuzz(stack: LocalStack, args: argparse.Namespace) -> tuple[Tally, float, dict[str, int]]:
    pools, tally = Pools(), Tally()
    surfaces = list(SURFACES)
    weights = [WEIGHTS[s] for s in surfaces]
    redis = aioredis.Redis.from_url(stack.redis_url)
    channels = open_channels(stack, grpc.aio.insecure_channel)
    stubs = stubs_of(channels)
    signer = bus_signer(stack)
    try:
        await open_waits(stubs, pools)
        next_index = iter(range(args.inputs))
        started = time.monotonic()

        async def sender() -> None:
            for index in next_index:
                rng = random.Random(f"{args.seed}:{index}")
                item = draw(rng.choices(surfaces, weights)[0], rng, pools)
                await send(item, stubs, redis, signer, tally)

        async def progress() -> None:
            while True:
                await asyncio.sleep(10)
                try:
                    await refresh(stubs, pools)
                except grpc.aio.AioRpcError as exc:  # the pools stay as they were
                    print(f"  could not refresh the pools: {exc.code().name} {exc.details()}", flush=True)
                done = sum(tally.tried.values())
                dead = [name for name, p in processes(stack).items() if not p.running]
                print(f"  {done:,} inputs, {done / (time.monotonic() - started):,.0f}/s, "
                      f"{len(tally.findings)} crashes or hangs" + (f", DIED: {dead}" if dead else ""),
                      flush=True)

        reporter = asyncio.create_task(progress())
        await asyncio.gather(*(sender() for _ in range(args.concurrency)))
        elapsed = time.monotonic() - started
        reporter.cancel()
        backlog = await bus_backlog(redis, args.drain_timeout)
        return tally, elapsed, backlog
    finally:
        for channel in channels.values():
            await channel.close()
        await redis.aclose()


def mib(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"


def report(stack: LocalStack, args: argparse.Namespace, tally: Tally, elapsed: float,
           backlog: dict[str, int], problems: list[str], peaks: dict[str, int], redis_peak: int) -> int:
    total = sum(tally.tried.values())
    hangs = tally.count("hang") + sum(1 for v in backlog.values() if v)
    crashes = tally.count("crash") + len(problems)
    print(f"\nfuzzed {total:,} inputs in {elapsed:,.1f} s: {total / elapsed:,.0f} inputs/s "
          f"(concurrency {args.concurrency}, seed {args.seed!r}, {args.workers} worker(s), "
          f"bus {'signed' if stack.signing_key else 'unsigned'})")
    print(f"{'surface':<12} {'tried':>10} {'mean ms':>8}  answers")
    for surface in SURFACES:
        answers = ", ".join(f"{code} {n:,}" for code, n in tally.codes.get(surface, Counter()).most_common())
        mean_ms = 1000 * tally.seconds[surface] / max(tally.tried[surface], 1)
        print(f"{surface:<12} {tally.tried[surface]:>10,} {mean_ms:>8.1f}  {answers}")
    seconds, slowest = tally.slowest
    if slowest is not None:
        print(f"slowest answer: {seconds:.3f} s, {slowest.surface}: {slowest.describe()}")
    print("peak RSS: " + ", ".join(f"{name} {mib(size)}" for name, size in sorted(peaks.items()))
          + f"; redis used_memory_peak {mib(redis_peak)}")
    print(f"bus entries not consumed after the run: {backlog}")
    print(f"crashes: {crashes}, hangs: {hangs}")
    for kind, code, details, item in tally.findings[:FINDINGS_SHOWN]:
        print(f"  {kind}: {item.surface} answered {code} {details[:200]!r}\n    input: {item.describe()}")
    for problem in problems[:FINDINGS_SHOWN]:
        print(f"  crash: {problem}")
    if tally.findings:
        with (stack.log_dir / "findings.txt").open("w") as out:
            for kind, code, details, item in tally.findings:
                out.write(f"{kind} {item.surface} {code} {details}\n{item.describe(limit=10**9)}\n\n")
    if args.json:
        args.json.write_text(json.dumps({
            "inputs": total, "seconds": elapsed, "rate": total / elapsed, "tried": dict(tally.tried),
            "answers": {s: dict(c) for s, c in tally.codes.items()}, "crashes": crashes, "hangs": hangs,
            "slowest_s": seconds, "slowest_input": slowest.describe() if slowest else "",
            "peak_rss": peaks, "redis_peak": redis_peak, "backlog": backlog, "problems": problems,
        }, indent=2))
    return 1 if crashes or hangs else 0


def run(stack: LocalStack, args: argparse.Namespace) -> int:
    """Fuzz a started stack and print the report; the exit code (1 on a crash or a hang)."""
    print(f"stack up, logs in {stack.log_dir}; sending {args.inputs:,} inputs", flush=True)
    tally, elapsed, backlog = asyncio.run(fuzz(stack, args))
    peaks = peak_rss(stack)
    with sync_redis.Redis.from_url(stack.redis_url) as conn:
        redis_peak = int(conn.info("memory")["used_memory_peak"])
    return report(stack, args, tally, elapsed, backlog, stack_problems(stack), peaks, redis_peak)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    stack = LocalStack(workers=args.workers, task_modules=["tests.fuzz.tasks"], signing=args.signing).start()
    failed = True
    try:
        failed = run(stack, args) != 0
        return int(failed)
    finally:
        stack.stop(keep_logs=failed)
        if failed:
            print(f"logs kept in {stack.log_dir}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
