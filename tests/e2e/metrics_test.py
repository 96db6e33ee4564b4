"""End to end: every process of a live stack serves /metrics, and after a known workload the
counters hold exactly its numbers (docs/operations.md lists the metrics)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from graflow import RunFailedError, workflow
from graflow.devstack import LocalStack
from graflow.errors import RunNotFoundError
from graflow_runtime import keys
from graflow_runtime.runids import new_run_id
from tests.e2e.conftest import module_stack, start_stack, wait_for
from tests.e2e.tasks import flaky, overrun, refuse, source

WORKERS = 2
# The fleet-wide gauges are measured every 0.2 s (default 5 s).
FAST_FLEET = {
    "GRAFLOW_SCHEDULER_FLEET_METRICS_INTERVAL_S": "0.2",
    "GRAFLOW_COORDINATOR_FLEET_METRICS_INTERVAL_S": "0.2",
}


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    with module_stack(request, workers=WORKERS, metrics=True, env=FAST_FLEET) as stack:
        yield stack


def scrape(stack: LocalStack, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One process' samples: (sample name, sorted labels) -> value."""
    with urllib.request.urlopen(stack.metrics_url(name), timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: list[dict], name: str, **labels: str) -> float:
    """The sum over processes of the samples ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(
        value
        for process in samples
        for (sample, sample_labels), value in process.items()
        if sample == name and wanted <= set(sample_labels)
    )


def workers(stack: LocalStack) -> list[dict]:
    return [scrape(stack, f"worker-{i}") for i in range(WORKERS)]


def test_every_process_serves_its_metrics(stack):
    for name in ("scheduler", "coordinator", "result-store", "worker-0", "worker-1"):
        samples = scrape(stack, name)
        # prometheus-client's process collector: the endpoint is this process' own registry.
        assert ("process_cpu_seconds_total", ()) in samples, name


def test_task_counters_and_histograms_count_a_known_workload(stack, client):
    for value in (1, 2, 3):
        with workflow(f"metrics-source-{value}") as wf:
            source(task_id="s", value=value)
        assert client.submit(wf).result(timeout=30) == value
    with workflow("metrics-flaky") as wf:
        flaky(task_id="f", fail_times=1)  # attempt 1 fails and is retried, attempt 2 succeeds
    assert client.submit(wf).result(timeout=30) == 2
    with workflow("metrics-refuse") as wf:
        refuse(task_id="r")  # NonRetryableError: one failed attempt, no retry
    with pytest.raises(RunFailedError):
        client.submit(wf).result(timeout=30)
    with workflow("metrics-overrun") as wf:
        overrun(task_id="o", seconds=1.0)  # timeout 0.5 s, 2 attempts: both time out, one retry
    with pytest.raises(RunFailedError):
        client.submit(wf).result(timeout=30)

    # (process, sample, task type) -> its value on queue "default", summed over that process' replicas.
    expected = {
        ("workers", "graflow_tasks_started_total", source.name): 3,
        ("workers", "graflow_tasks_succeeded_total", source.name): 3,
        ("workers", "graflow_tasks_failed_total", source.name): 0,
        ("workers", "graflow_task_duration_seconds_count", source.name): 3,
        ("workers", "graflow_task_queue_wait_seconds_count", source.name): 3,
        ("workers", "graflow_tasks_started_total", flaky.name): 2,
        ("workers", "graflow_tasks_failed_total", flaky.name): 1,
        ("workers", "graflow_tasks_succeeded_total", flaky.name): 1,
        ("workers", "graflow_tasks_timed_out_total", flaky.name): 0,
        ("workers", "graflow_tasks_started_total", refuse.name): 1,
        ("workers", "graflow_tasks_failed_total", refuse.name): 1,
        ("workers", "graflow_tasks_failed_total", overrun.name): 2,
        ("workers", "graflow_tasks_timed_out_total", overrun.name): 2,
        ("scheduler", "graflow_tasks_retried_total", flaky.name): 1,
        ("scheduler", "graflow_tasks_retried_total", overrun.name): 1,
        ("scheduler", "graflow_tasks_retried_total", refuse.name): 0,
    }
    scraped = {"workers": workers(stack), "scheduler": [scrape(stack, "scheduler")]}
    measured = {
        (process, name, task_type): total(scraped[process], name, task_type=task_type, queue="default")
        for process, name, task_type in expected
    }
    assert measured == expected
    # Each timed-out attempt ran for its 0.5 s timeout: both in the 0.5..1 s buckets, none below.
    on_workers = scraped["workers"]
    assert total(on_workers, "graflow_task_duration_seconds_bucket", task_type=overrun.name, le="0.25") == 0
    assert total(on_workers, "graflow_task_duration_seconds_bucket", task_type=overrun.name, le="2.5") == 2

    scheduler = scraped["scheduler"]
    # 6 runs: every attempt (3 + 2 + 1 + 2 = 8) was dispatched and its outcome applied by the scheduler.
    assert total(scheduler, "graflow_dispatch_batch_size_sum") == 8
    assert total(scheduler, "graflow_scheduler_outcome_batch_size_sum") == 8
    assert total(scheduler, "graflow_scheduler_outcome_apply_seconds_count") == total(
        scheduler, "graflow_scheduler_outcome_batch_size_count"
    )

    # 4 runs succeeded, 2 failed: the scheduler holding the lease counts their ends.
    wait_for(
        lambda: total([scrape(stack, "scheduler")], "graflow_runs_ended_total", status="SUCCEEDED") == 4
        and total([scrape(stack, "scheduler")], "graflow_runs_ended_total", status="FAILED") == 2,
        timeout_s=10,
        what="the runs ended by status",
    )

    # The six SubmitRun calls, each answered OK (the server's histogram counts calls per code);
    # an unknown run is NOT_FOUND.
    submit = "/graflow_api.v1.Scheduler/SubmitRun"
    assert total(scheduler, "graflow_grpc_server_handled_seconds_count", method=submit, code="OK") == 6
    with pytest.raises(RunNotFoundError):
        client.get_run(new_run_id())
    # (recorded once the handler returned: context.abort sends the status to the client first)
    wait_for(
        lambda: total([scrape(stack, "scheduler")], "graflow_grpc_server_handled_seconds_count",
                      code="NOT_FOUND") == 1,
        timeout_s=5,
        what="the NOT_FOUND call counted",
    )
    scheduler = [scrape(stack, "scheduler")]
    assert total(scheduler, "graflow_grpc_server_handled_seconds_count", code="UNKNOWN") == 0


def test_the_fleet_gauges_count_the_live_workers(stack):
    wait_for(
        lambda: total([scrape(stack, "coordinator")], "graflow_workers_live") == WORKERS,
        timeout_s=10,
        what="the live workers gauge",
    )
    coordinator = [scrape(stack, "coordinator")]
    assert total(coordinator, "graflow_fleet_leader", service="coordinator") == 1
    assert 0 <= total(coordinator, "graflow_workers_oldest_heartbeat_age_seconds") < 10


@pytest.mark.parametrize("redis_cluster", [False, True], ids=["redis", "redis-cluster"])
def test_queue_lag_and_runs_with_no_worker_are_what_was_enqueued(redis_cluster: bool):
    """A stack without workers, its keys in 4 cells (the gauges sum them) on a Redis, or a Redis
    Cluster, with the services' ACL users (so the gauges' commands are granted): N runs submitted
    wait in the queue, undelivered."""
    stack, server = start_stack(
        workers=0, metrics=True, redis_acl=True, cells=4, redis_cluster=redis_cluster, env=FAST_FLEET
    )
    try:
        with stack.client(timeout=30) as client:
            for i in range(5):
                with workflow(f"metrics-lag-{i}") as wf:
                    source(task_id="s", value=i)
                client.submit(wf)

        def fleet(name: str, process: str, **labels: str) -> float:
            return total([scrape(stack, process)], name, **labels)

        wait_for(
            lambda: fleet("graflow_queue_lag", "coordinator", queue="default") == 5
            and fleet("graflow_runs", "scheduler", status="active") == 5,
            timeout_s=10,
            what="the fleet gauges to count the 5 runs",
        )
        assert fleet("graflow_queue_length", "coordinator", queue="default") == 5
        assert fleet("graflow_queue_pending", "coordinator", queue="default") == 0
        assert fleet("graflow_queue_oldest_pending_age_seconds", "coordinator", queue="default") == 0
        assert fleet("graflow_workers_live", "coordinator") == 0
        assert fleet("graflow_runs", "scheduler", status="retained") == 5
        assert fleet("graflow_feedback_waiting", "scheduler") == 0
        assert fleet("graflow_fleet_leader", "scheduler", service="scheduler") == 1
    finally:
        stack.stop()
        server.close()


def test_an_undecodable_delivery_counts_as_dead_lettered_on_its_queue(stack, fx):
    """An entry no worker can decode is dead-lettered by the worker that read it."""
    def dead_lettered() -> float:
        return total(workers(stack), "graflow_tasks_dead_lettered_total", queue="default")

    before = dead_lettered()
    fx.xadd(keys.queue_stream("default"), {keys.ENVELOPE_FIELD: b"\xff not an envelope"})
    wait_for(lambda: dead_lettered() == before + 1, timeout_s=10, what="the dead-lettered counter")
