"""What a measure costs: Redis commands and round trips, and CPU time per process.

Unlike wall-clock figures these barely move with the machine's noise, so they show a change's cost
where latency cannot, and they say which process pays it.

- Redis commands: ``INFO commandstats`` (every command Redis ran, those inside Lua scripts included;
  the sampling's own ``INFO`` excluded).
- Redis round trips: ``INFO stats`` ``total_reads_processed``, the read events Redis served: one per
  request a client sent (a pipeline counts once, unless it is larger than one read).
- CPU: user + system time of each process (``/proc/<pid>/stat``, all threads), Redis's from
  ``INFO cpu``, this process's (the benchmark's client) from :func:`time.process_time`.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Mapping

import redis

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CLIENT = "client"
REDIS = "redis"


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank), NaN when there are none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process, all its threads (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Cost:
    """Redis commands, round trips and CPU seconds per process between ``start()`` and ``stop()``.

    ``pids`` names the processes whose CPU counts (e.g. ``{"scheduler": 1234, "worker-0": ...}``);
    Redis and this process (``client``) are always sampled. ``stop()`` reports ``cpu_us``, the sum
    over ``pids`` and Redis, without the client, unless ``client_counts`` (a baseline, whose client
    is the whole system under test)."""

    def __init__(self, url: str, pids: Mapping[str, int], *, client_counts: bool = False) -> None:
        self.redis = redis.Redis.from_url(url)
        self.pids = dict(pids)
        self.client_counts = client_counts
        self._begin: tuple[int, int, dict[str, float]] = (0, 0, {})

    def _sample(self) -> tuple[int, int, dict[str, float]]:
        stats = self.redis.info("commandstats")
        calls = sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")
        reads = int(self.redis.info("stats")["total_reads_processed"])
        cpu = self.redis.info("cpu")
        seconds = {name: process_cpu_s(pid) for name, pid in self.pids.items()}
        seconds[REDIS] = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
        seconds[CLIENT] = time.process_time()
        return calls, reads, seconds

    def start(self) -> None:
        self._begin = self._sample()

    def stop(self, units: int) -> dict[str, object]:
        """Per unit (a run, a task, a message): ``redis_commands``, ``redis_round_trips``, ``cpu_us``
        (see the class) and ``cpu_us_by_process``."""
        calls, reads, seconds = self._sample()
        # The three INFO calls of each sample are reads too.
        round_trips = reads - self._begin[1] - 3
        by_process = {name: (seconds[name] - self._begin[2][name]) * 1e6 / units for name in seconds}
        counted = [name for name in by_process if name != CLIENT or self.client_counts]
        return {
            "redis_commands": (calls - self._begin[0]) / units,
            "redis_round_trips": round_trips / units,
            "cpu_us": sum(by_process[name] for name in counted),
            "cpu_us_by_process": by_process,
        }

    def close(self) -> None:
        self.redis.close()
