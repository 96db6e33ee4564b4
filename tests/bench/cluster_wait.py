"""What ``WAIT 1 <ms>`` after each commit would cost on a Redis Cluster (issue 10).

Redis replicates asynchronously: a primary that dies can lose writes it acknowledged. ``WAIT
numreplicas timeout`` after a write blocks until that many replicas acknowledged every earlier
write of the connection, which closes that window for the writes it follows (short of both the
primary and the replica dying together, or the timeout passing). Redis runs no ``WAIT`` inside a Lua
script or a ``MULTI``, so it would follow the commit script on the same connection to the same
primary: here on a client with one connection to it (``connect_cluster(url, max_connections=1,
home_key=...)``).

The commit measured is the shape of the worker's (``append_and_ack.lua``): an ``XADD`` of an outcome
of ``--payload`` bytes and an ``XACK``, in one cell's slot. Printed: latency (p50, p99) of one
commit at a time, and commits/s with ``--concurrency`` commits in flight on as many connections,
without and with ``WAIT 1 <--wait-ms>``, on a local cluster (3 primaries, 3 replicas, AOF
everysec), and the ratio. Timings drift between runs on shared machines: compare within one run.

    ./pants run tests/bench/cluster_wait.py -- --commits 5000 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from redis.asyncio.cluster import RedisCluster

from graflow_runtime.local_redis import LocalRedisCluster
from graflow_runtime.redis_client import connect_cluster
from graflow_runtime.scripts import LuaScript

COMMIT = LuaScript(
    "bench_commit.lua",
    "redis.call('XADD', KEYS[1], 'MAXLEN', '~', 100000, '*', 'o', ARGV[1])\n"
    "return redis.call('XACK', KEYS[2], 'workers', ARGV[2])",
)
STREAM, LANE = "gf:{c0.4}:outcomes", "gf:{c0.4}:q:default"


async def commits(client: RedisCluster, count: int, payload: bytes, wait_ms: int | None) -> list[float]:
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        await COMMIT.run(client, [STREAM, LANE], [payload, "0-1"])
        if wait_ms is not None:
            acknowledged = await client.execute_command("WAIT", 1, wait_ms)
            if acknowledged < 1:
                raise RuntimeError(f"no replica acknowledged within {wait_ms} ms")
        latencies.append(time.perf_counter() - started)
    return latencies


async def measure(url: str, args: argparse.Namespace, wait_ms: int | None) -> dict[str, float]:
    cluster = connect_cluster(url)
    # One connection each to the stream's primary: a WAIT follows its commit on that connection.
    primaries = [connect_cluster(url, max_connections=1, home_key=STREAM) for _ in range(args.concurrency)]
    payload = b"x" * args.payload
    try:
        await COMMIT.load_into(cluster)
        sequential = await commits(primaries[0], args.commits // 5, payload, wait_ms)
        started = time.perf_counter()
        per = args.commits // args.concurrency
        await asyncio.gather(*(commits(p, per, payload, wait_ms) for p in primaries))
        elapsed = time.perf_counter() - started
    finally:
        for client in primaries:
            await client.aclose()
        await cluster.aclose()
    ordered = sorted(sequential)
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99)] * 1000,
        "per_s": per * args.concurrency / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--payload", type=int, default=200, help="bytes of each outcome")
    parser.add_argument("--wait-ms", type=int, default=100, help="WAIT's timeout")
    args = parser.parse_args()
    with LocalRedisCluster() as cluster:
        plain = asyncio.run(measure(cluster.url, args, None))
        waited = asyncio.run(measure(cluster.url, args, args.wait_ms))
    print(f"{'':>22} {'p50 ms':>8} {'p99 ms':>8} {'commits/s':>10}")
    for name, row in (("commit", plain), (f"commit + WAIT 1 {args.wait_ms}", waited)):
        print(f"{name:>22} {row['p50_ms']:8.3f} {row['p99_ms']:8.3f} {row['per_s']:10.0f}")
    print(
        f"WAIT: latency x{waited['p50_ms'] / plain['p50_ms']:.2f} (p50), "
        f"throughput x{waited['per_s'] / plain['per_s']:.2f} "
        f"({args.concurrency} commits in flight, {args.payload}-byte outcomes)"
    )


if __name__ == "__main__":
    main()
