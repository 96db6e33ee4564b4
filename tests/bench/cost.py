"""What a measure costs: Redis commands and round trips, and CPU time per process.

Unlike wall-clock figures these barely move with the machine's noise, so they show a change's cost
where latency cannot, and they say which process pays it.

- Redis commands: ``INFO commandstats`` (every command Redis ran, those inside Lua scripts included;
  the sampling's own ``INFO`` excluded).
- Redis round trips: ``INFO stats`` ``total_reads_processed``, the read events Redis served: one per
  request a client sent (a pipeline counts once, unless it is larger than one read).
- Redis bytes: ``INFO stats`` ``total_net_input_bytes`` / ``total_net_output_bytes`` (what clients
  sent / received; the sampling's own ``INFO`` replies, a few KiB a sample, are included).
- Redis commands and Redis time by command: ``INFO commandstats`` ``calls`` and ``usec`` of each
  (``EVALSHA``'s time includes its script's commands, which count again under their own names;
  Redis CPU outside ``usec`` is reading, parsing and writing the network traffic).
- CPU: user + system time of each process (``/proc/<pid>/stat``, all threads), Redis's from
  ``INFO cpu``, this process's (the benchmark's client) from :func:`time.process_time`.

Given several Redis nodes (a cluster's), every Redis figure is their sum: a replica's CPU (its
replication included) counts, and so do the writes it re-runs from its primary (commands).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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


@dataclass
class Sample:
    reads: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    by_command: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (calls, usec)
    seconds: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds


class Cost:
    """Redis commands, round trips, bytes and CPU seconds per process between ``start()`` and
    ``stop()``.

    ``pids`` names the processes whose CPU counts (e.g. ``{"scheduler": 1234, "worker-0": ...}``);
    Redis and this process (``client``) are always sampled. ``stop()`` reports ``cpu_us``, the sum
    over ``pids`` and Redis, without the client, unless ``client_counts`` (a baseline, whose client
    is the whole system under test)."""

    def __init__(self, url: str | Sequence[str], pids: Mapping[str, int], *,
                 client_counts: bool = False) -> None:
        self.nodes = [redis.Redis.from_url(u) for u in ([url] if isinstance(url, str) else url)]
        self.pids = dict(pids)
        self.client_counts = client_counts
        self._begin = Sample()

    def _sample(self) -> Sample:
        total = Sample()
        for node in self.nodes:
            commands = node.info("commandstats")
            stats = node.info("stats")
            cpu = node.info("cpu")
            total.reads += int(stats["total_reads_processed"])
            total.bytes_in += int(stats["total_net_input_bytes"])
            total.bytes_out += int(stats["total_net_output_bytes"])
            for key, v in commands.items():
                if key != "cmdstat_info":
                    calls, usec = total.by_command.get(key.removeprefix("cmdstat_"), (0, 0))
                    total.by_command[key.removeprefix("cmdstat_")] = (calls + int(v["calls"]),
                                                                      usec + int(v["usec"]))
            total.seconds[REDIS] = (total.seconds.get(REDIS, 0.0) + float(cpu["used_cpu_user"])
                                    + float(cpu["used_cpu_sys"]))
        total.seconds.update({name: process_cpu_s(pid) for name, pid in self.pids.items()})
        total.seconds[CLIENT] = time.process_time()
        return total

    def start(self) -> None:
        self._begin = self._sample()

    def stop(self, units: int) -> dict[str, object]:
        """Per unit (a run, a task, a message): ``redis_commands``, ``redis_round_trips``,
        ``redis_bytes_in``/``_out``, ``cpu_us`` (see the class), ``cpu_us_by_process``, and by Redis
        command ``redis_calls_by_command`` and ``redis_usec_by_command``."""
        end, begin = self._sample(), self._begin
        # The three INFO calls of each sample, on each node, are reads too.
        round_trips = end.reads - begin.reads - 3 * len(self.nodes)
        by_process = {name: (end.seconds[name] - begin.seconds[name]) * 1e6 / units for name in end.seconds}
        counted = [name for name in by_process if name != CLIENT or self.client_counts]
        deltas = {name: (calls - begin.by_command.get(name, (0, 0))[0],
                         usec - begin.by_command.get(name, (0, 0))[1])
                  for name, (calls, usec) in end.by_command.items()}
        deltas = {name: delta for name, delta in deltas.items() if delta[0]}
        return {
            "redis_commands": sum(calls for calls, _usec in deltas.values()) / units,
            "redis_round_trips": round_trips / units,
            "redis_bytes_in": (end.bytes_in - begin.bytes_in) / units,
            "redis_bytes_out": (end.bytes_out - begin.bytes_out) / units,
            "cpu_us": sum(by_process[name] for name in counted),
            "cpu_us_by_process": by_process,
            "redis_calls_by_command": {name: calls / units for name, (calls, _usec) in deltas.items()},
            "redis_usec_by_command": {name: usec / units for name, (_calls, usec) in deltas.items()},
        }

    def close(self) -> None:
        for node in self.nodes:
            node.close()
