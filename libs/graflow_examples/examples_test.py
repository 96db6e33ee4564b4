"""The example tasks run locally (called without task_id) and their workflows have the documented shape."""

from __future__ import annotations

import asyncio
import importlib

import pytest

from graflow import NonRetryableError, TaskContext
from graflow_examples import EXAMPLES, TASK_MODULES, etl, fanout, resilience


def test_etl_tasks_compute_the_expected_report():
    rows = etl.fetch()
    cleaned = etl.clean(fetch=rows)
    regions = asyncio.run(etl.enrich(fetch=rows))
    assert [row["id"] for row in cleaned] == [1, 3, 4]
    assert regions == {"ada": "EMEA", "grace": "AMER", "linus": "EMEA"}
    assert etl.report(clean=cleaned, enrich=regions) == etl.EXPECTED_REPORT


def test_fetch_returns_a_fresh_copy_each_time():
    etl.fetch()[0]["amount"] = 0
    assert etl.fetch()[0]["amount"] == 120.0


def test_etl_workflow_is_fetch_then_clean_and_enrich_then_report():
    spec = etl.etl.spec()
    assert spec.name == "etl"
    assert {n.id for n in spec.nodes} == {"fetch", "clean", "enrich", "report"}
    group = spec.groups[0]
    assert sorted(group.member_ids) == ["clean", "enrich"]
    assert {(e.from_id, e.to_id) for e in spec.edges} == {("fetch", group.id), (group.id, "report")}


def test_fanout_has_n_items_between_start_and_join():
    spec = fanout.build_fanout(5).spec()
    assert len(spec.nodes) == 7
    assert list(spec.groups[0].member_ids) == [f"item_{i}" for i in range(5)]
    results = {f"item_{i}": fanout.fanout_item(i=i, fanout_start=fanout.fanout_start()) for i in range(5)}
    assert fanout.fanout_join(**results) == {"count": 5, "total": 10}
    with pytest.raises(ValueError, match="n >= 1"):
        fanout.build_fanout(0)


def context(attempt: int) -> TaskContext:
    return TaskContext(
        run_id="r",
        node_id="flaky_fetch",
        task_type="flaky_fetch",
        attempt=attempt,
        max_attempts=3,
        worker_id="w",
        channel=None,
    )  # type: ignore[arg-type]


def test_flaky_fetch_fails_its_first_attempt_only():
    with pytest.raises(ConnectionError, match="attempt 1"):
        resilience.flaky_fetch(context(1))
    assert resilience.summarize(flaky_fetch=resilience.flaky_fetch(context(2))) == "3 rows after 2 attempts"


def test_validate_refuses_a_negative_threshold_without_retry():
    with pytest.raises(NonRetryableError, match="threshold must be >= 0"):
        resilience.validate(fetch_config=resilience.fetch_config())


def test_slow_example_sleeps_then_summarizes():
    assert resilience.summarize_nap(nap=resilience.nap(seconds=0.01)) == "slept 0.01 s"
    assert resilience.slow(5).spec().nodes[0].args_json == b'{"seconds":5}'


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_listed_example_resolves_to_a_workflow_from_a_task_module(name):
    module_name, attr = EXAMPLES[name].split(":")
    assert module_name in TASK_MODULES
    target = getattr(importlib.import_module(module_name), attr)
    workflow = target if hasattr(target, "spec") else target()
    assert workflow.spec().nodes
