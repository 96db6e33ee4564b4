"""The soak's memory judgement (tests/bench/memory.py) against a real Redis and made-up samples."""

from __future__ import annotations

import pytest
import redis

from graflow_runtime import keys
from tests.bench.memory import (
    LOAD,
    REDIS_USED,
    SETTLE,
    WARMED,
    Sample,
    census,
    findings,
    judge,
    pattern_of,
    redis_verdict,
    worker_lifetimes,
)


def test_keys_fold_run_ids_and_named_ids_into_patterns() -> None:
    assert pattern_of(keys.run_state("r-1")) == "gf:run:{R}:state"
    assert pattern_of(keys.dispatch_record("r-2")) == "gf:dispatch:{R}"
    assert pattern_of(keys.idempotency("client-key")) == "gf:idem:*"
    assert pattern_of(keys.worker_info("dev-worker-7")) == "gf:worker:*"
    assert pattern_of(keys.queue_stream("default")) == "gf:q:*"
    assert pattern_of(keys.RUNS_ENDED) == "gf:ended"


def test_census_counts_keys_elements_bytes_and_stream_consumers(bus: redis.Redis) -> None:
    bus.hset(keys.run_state("a"), mapping={"n1": "SUCCEEDED", "n2": "SUCCEEDED", "n3": "READY"})
    bus.hset(keys.run_state("b"), mapping={"n1": "PENDING", "n2": "PENDING"})
    bus.set(keys.idempotency("k"), "a")
    bus.xgroup_create(keys.OUTCOMES_STREAM, keys.SCHEDULER_GROUP, id="0", mkstream=True)
    bus.xadd(keys.OUTCOMES_STREAM, {"o": b"x"})
    bus.xadd(keys.OUTCOMES_STREAM, {"o": b"y"})
    bus.xreadgroup(keys.SCHEDULER_GROUP, "scheduler-1", {keys.OUTCOMES_STREAM: ">"}, count=1)

    counts = census(bus, sample=1)

    state = counts["gf:run:{R}:state"]
    assert (state.keys, state.elements, state.sampled) == (2, 5, 1)
    assert state.bytes > 0
    assert (counts["gf:idem:*"].keys, counts["gf:idem:*"].elements) == (1, 1)
    outcomes = counts[keys.OUTCOMES_STREAM]
    assert (outcomes.elements, outcomes.consumers, outcomes.pending) == (2, 1, 1)


def test_findings_name_what_retention_should_have_removed_and_unknown_growth(bus: redis.Redis) -> None:
    bus.zadd(keys.RUNS_INDEX, {"old": 1})
    before = census(bus)
    bus.zadd(keys.RUNS_INDEX, {"r1": 2, "r2": 3})  # the listing kept runs whose state expired
    bus.hset(keys.run_meta("r1"), "status", "SUCCEEDED")  # a run's key left after retention
    bus.hset(keys.dispatch_record("r1"), "n1", 1)  # kept on purpose: not a finding
    bus.set("gf:mystery:1", "x" * 100)
    after = census(bus)

    found = {f.pattern: f.problem for f in findings(before, after)}

    assert set(found) == {keys.RUNS_INDEX, "gf:run:{R}", "gf:mystery:1"}
    assert "1 -> 3 elements" in found[keys.RUNS_INDEX]
    assert "not a known key pattern" in found["gf:mystery:1"]


def test_redis_is_back_to_baseline_when_only_kept_records_grew(bus: redis.Redis) -> None:
    before = census(bus)
    for run in range(50):
        bus.hset(keys.dispatch_record(f"r{run}"), mapping={f"n{i}": 1 for i in range(200)})
    after = census(bus)
    kept_mib = (after["gf:dispatch:{R}"].bytes) / 2**20

    explained = redis_verdict(2.0, 2.0 + kept_mib, before, after)
    leaked = redis_verdict(2.0, 2.0 + kept_mib + 0.5, before, after)

    assert explained.back_to_baseline and abs(explained.unexplained_mib) < 1e-9
    assert not leaked.back_to_baseline and leaked.unexplained_mib == pytest.approx(0.5)


def _sample(phase: str, scheduler: float, workers: dict[str, float]) -> Sample:
    return Sample(0.0, phase, {"scheduler": scheduler, REDIS_USED: 2.0}, workers)


def test_a_service_is_flat_only_within_ten_percent_of_its_value_after_warm_up() -> None:
    phases = (WARMED, LOAD, LOAD, SETTLE)
    flat = [_sample(phase, rss, {}) for phase, rss in zip(phases, (100, 109, 105, 104), strict=True)]
    grows = [_sample(phase, rss, {}) for phase, rss in zip(phases, (100, 108, 112, 111), strict=True)]

    (ok, used), (bad, _) = judge(flat, workers_judged=False), judge(grows, workers_judged=False)

    assert (ok.name, ok.flat, ok.max, ok.end, ok.settled) == ("scheduler", True, 109, 105, 104)
    assert ok.max_deviation_pct == pytest.approx(9.0)
    assert (bad.flat, bad.max_deviation_pct) == (False, pytest.approx(12.0))
    assert used.flat is None  # Redis is judged by redis_verdict


def test_workers_are_judged_without_kills_and_described_by_their_lifetimes_with_kills() -> None:
    samples = [_sample(WARMED, 100, {"worker-0/1": 80}),
               _sample(LOAD, 100, {"worker-0/1": 96, "worker-1/2": 70}),
               _sample(LOAD, 100, {"worker-1/2": 77})]

    rows = {r.name: r for r in judge(samples, workers_judged=True)}
    life = worker_lifetimes(samples)

    assert rows["worker-0/1"].flat is False  # +20%
    assert "worker-1/2" not in rows  # not alive after the warm-up: not judged
    assert (life.workers, sorted(life.peak)) == (2, [77, 96])
    assert sorted(life.growth_pct) == [pytest.approx(10.0), 20.0]
