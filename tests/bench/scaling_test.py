"""The scaling model's arithmetic on made-up figures, and its byte counters against a real Redis."""

from __future__ import annotations

import os

import pytest
import redis

from graflow_runtime import keys
from graflow_runtime.local_redis import LocalRedis
from tests.bench.cost import Cost
from tests.bench.hops import key_pattern, port_owners, process_of, resp_size, socket_bytes
from tests.bench.scaling import capacity, main, needs, predict

# CPU us per task: Redis 100, scheduler 200, two workers 150 in all, the client 50.
FIGURES = {"cpu_us_by_process": {"redis": 100.0, "scheduler": 200.0, "worker-0": 75.0, "worker-1": 75.0,
                                 "client": 50.0}}


def test_capacity_is_one_core_over_the_cpu_a_task_costs_each_process() -> None:
    assert capacity(FIGURES) == {"redis": 10_000.0, "scheduler": 5_000.0, "worker": 1e6 / 150}


def test_needs_rounds_up_the_shards_and_replicas_of_a_load() -> None:
    assert needs(FIGURES, 12_000) == {"Redis shards": 2, "scheduler replicas": 3, "worker replicas": 2}


def test_predict_takes_the_least_of_the_cores_the_shards_and_the_replicas() -> None:
    # 2 cores over 500 us a task (the client's included): 4,000/s, under every other limit.
    assert predict(FIGURES, cores=2) == (4_000.0, "2 cores (all processes' CPU)")
    # 32 cores: one scheduler (5,000/s) binds; two replicas of it, then the two workers (13,333/s).
    assert predict(FIGURES, cores=32) == (5_000.0, "scheduler x1")
    assert predict(FIGURES, cores=32, replicas=2) == (10_000.0, "Redis x1")
    assert predict(FIGURES, cores=32, shards=3, replicas=2) == (10_000.0, "scheduler x2")


def test_resp_size_is_what_redis_counts_as_input(bus: redis.Redis, redis_url: str) -> None:
    command = [b"HSET", b"gf:run:r-1", b"field", b"x" * 300]
    cost = Cost(redis_url, {})
    cost.start()
    bus.execute_command(*command)
    spent = cost.stop(1)
    cost.close()
    info_requests = resp_size([b"INFO", b"commandstats"]) + resp_size([b"INFO", b"stats"]) + resp_size(
        [b"INFO", b"cpu"])
    assert spent["redis_bytes_in"] == resp_size(command) + info_requests
    assert spent["redis_calls_by_command"] == {"hset": 1.0}


def test_socket_bytes_counts_each_process_traffic_with_redis(bus: redis.Redis, redis_url: str) -> None:
    bus.ping()
    port = bus.connection_pool.connection_kwargs["port"]
    owners = port_owners({"bench": os.getpid()})
    before = socket_bytes(port, owners)
    bus.set("k", b"v" * 1000)
    after = socket_bytes(port, owners)
    after.subtract(before)
    assert after[("bench", "in")] == resp_size([b"SET", b"k", b"v" * 1000])
    assert after[("bench", "out")] == len(b"+OK\r\n")


def test_key_pattern_names_the_first_graflow_key() -> None:
    script = [b"EVALSHA", b"abc", b"2", keys.run_state("r-1").encode(), keys.OUTCOMES_STREAM.encode()]
    assert key_pattern(script) == "gf:run:{R}:state"
    read = [b"XREADGROUP", b"GROUP", b"workers", b"w", b"STREAMS", b"gf:q:default", b">"]
    assert key_pattern(read) == "gf:q:*"
    assert key_pattern([b"PING"]) == "-"


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(SystemExit) as refused:
        main(["--fanout", "0"])
    assert refused.value.code == 2


def test_cost_sums_every_node_of_several(bus: redis.Redis, redis_url: str) -> None:
    with LocalRedis() as other:
        second = redis.Redis.from_url(other.url)
        second.ping()  # connected (its handshake) before the measure
        cost = Cost([redis_url, other.url], {})
        cost.start()
        bus.set("a", "1")
        second.set("b", "2")
        second.get("b")
        spent = cost.stop(1)
        cost.close()
        second.close()
    assert spent["redis_calls_by_command"] == {"set": 2.0, "get": 1.0}
    assert spent["redis_round_trips"] == 3.0


def test_a_services_processes_count_together() -> None:
    assert [process_of(name) for name in ("worker-1", "scheduler-1", "result-store", "result-store-2")] == [
        "worker", "scheduler", "result-store", "result-store"]
