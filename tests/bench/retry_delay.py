"""Benchmark: how late the coordinator's retry timer appends a delayed delivery that another process
(the scheduler) scheduled, since that process no longer wakes the timer in its own memory.

    ./pants run tests/bench/retry_delay.py -- [--deliveries 200] [--max-sleep-ms 1000]

A private Redis, a coordinator (in this process, on its own Redis client: the retry timer with its
default cap unless ``--max-sleep-ms``) and, as the scheduler does, graflow_runtime.dispatch on
another client. Delayed deliveries (50-500 ms) are dispatched one at a time at random moments; a
reader follows the queue stream. Lateness = the entry's stream id (Redis's clock when it was
appended) - its due time (the dispatching client's clock: one host here). Printed: p50, p99, max
lateness, and how many were appended before their due time (must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
from pathlib import Path

from graflow_api.v1 import coordinator_pb2, messages_pb2
from graflow_runtime import keys
from graflow_runtime.dispatch import Dispatcher
from graflow_runtime.local_redis import LocalRedis
from graflow_runtime.queues import QueueGroups
from graflow_runtime.redis_client import connect
from graflow_runtime.streams import stream_id

from graflow_coordinator.app import create_app
from graflow_coordinator.settings import CoordinatorSettings


def _delivery(i: int, delay_ms: int) -> coordinator_pb2.Delivery:
    envelope = messages_pb2.TaskEnvelope(
        run_id="bench-run", node_id=f"n{i}", task_type="t", attempt=2, queue="default"
    )
    return coordinator_pb2.Delivery(envelope=envelope, delay_ms=delay_ms)


async def _measure(url: str, deliveries: int, max_sleep_ms: int | None) -> list[int]:
    overrides = {} if max_sleep_ms is None else {"retry_timer_max_sleep_ms": max_sleep_ms}
    settings = CoordinatorSettings(redis_url=url, listen_address="127.0.0.1:0", **overrides)
    coordinator = create_app(settings, connect(url))
    await coordinator.start()
    scheduler_redis, reader = connect(url), connect(url)
    dispatcher = Dispatcher(scheduler_redis, QueueGroups(scheduler_redis), record_ttl_s=600)
    stream = keys.queue_stream("default")
    rng = random.Random(13)
    lateness: list[int] = []
    try:
        await dispatcher.dispatch([_delivery(-1, 0)])  # the queue's group, a first entry
        last = (await reader.xrevrange(stream, count=1))[0][0]
        for i in range(deliveries):
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            sent = _delivery(i, rng.randint(50, 500))
            await dispatcher.dispatch([sent])
            ((_, entries),) = await reader.xread({stream: last}, block=5000)
            last = entries[-1][0]
            envelope = messages_pb2.TaskEnvelope.FromString(entries[-1][1][keys.ENVELOPE_FIELD])
            lateness.append(stream_id(last)[0] - envelope.enqueued_at_ms)  # enqueued_at = due ms
    finally:
        await scheduler_redis.aclose()
        await reader.aclose()
        await coordinator.stop()
    return lateness


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deliveries", type=int, default=200)
    parser.add_argument("--max-sleep-ms", type=int, default=None,
                        help="the timer's cap (default: its setting's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, LocalRedis(Path(tmp)) as redis_server:
        lateness = asyncio.run(_measure(redis_server.url, args.deliveries, args.max_sleep_ms))
    ordered = sorted(lateness)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(f"retry timer lateness over {len(lateness)} delayed deliveries (ms after due): "
          f"p50 {statistics.median(ordered):.0f}, p99 {p99}, max {ordered[-1]}, "
          f"early {sum(1 for x in ordered if x < 0)}")


if __name__ == "__main__":
    main()
