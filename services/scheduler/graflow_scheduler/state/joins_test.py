"""apply_outcome against a real Redis: joins, group policies, fencing, retries, failures."""

import pytest

from graflow_api.v1 import common_pb2, workflow_pb2
from graflow_runtime import keys

from graflow_scheduler.testing.runs import RunHarness
from graflow_scheduler.testing.specs import group, spec

KIND = workflow_pb2.GroupPolicy


def ready_nodes(result):
    return [node for node, _attempt in result.ready]


def run_error(meta):
    return common_pb2.ErrorInfo.FromString(meta["error"])


async def test_sequence_releases_each_node_after_its_predecessor_and_ends_the_run(store):
    run = await RunHarness.create(store, spec(["a", "b", "c"], ["a>b", "b>c"]))
    assert await run.states() == {"a": "READY", "b": "PENDING", "c": "PENDING"}
    assert ready_nodes(await run.finish("a")) == ["b"]
    assert ready_nodes(await run.finish("b")) == ["c"]
    last = await run.finish("c")
    assert (last.code, last.run_status, last.ready) == ("applied", "SUCCEEDED", ())
    assert await run.states() == {"a": "SUCCEEDED", "b": "SUCCEEDED", "c": "SUCCEEDED"}
    meta = await run.meta()
    assert (meta["status"], meta["pending"], meta["ended"]) == (b"SUCCEEDED", b"0", b"2000")


async def test_diamond_join_is_released_once_after_both_branches(store):
    run = await RunHarness.create(store, spec(["a", "b", "c", "d"], ["a>b", "a>c", "b>d", "c>d"]))
    assert ready_nodes(await run.finish("a")) == ["b", "c"]
    assert ready_nodes(await run.finish("b")) == []
    assert (await run.states())["d"] == "PENDING"
    assert ready_nodes(await run.finish("c")) == ["d"]
    assert [e for e in await run.events() if e == ("NODE_READY", "d")] == [("NODE_READY", "d")]


async def test_meta_counts_the_ready_and_pending_nodes_through_a_fan_out(store):
    members = ["m1", "m2", "m3"]
    run = await RunHarness.create(
        store, spec(["a", *members, "z"], ["a>g", "g>z"], [group("g", members, KIND.KIND_BEST_EFFORT)]))

    async def counts():
        meta, states = await run.meta(), await run.states()
        ready = sum(1 for state in states.values() if state == "READY")
        return int(meta["ready"]), int(meta["pending"]), ready

    assert await counts() == (1, 6, 1)
    await run.finish("a")
    assert await counts() == (3, 5, 3)
    await run.finish("m1")
    await run.finish("m2", ok=False)
    assert await counts() == (1, 3, 1)
    await run.finish("m3")
    assert await counts() == (1, 1, 1)
    await run.finish("z")
    assert await counts() == (0, 0, 0)


async def test_strict_group_releases_its_successor_when_all_members_succeeded(store):
    run = await RunHarness.create(store, spec(["a", "b", "c", "d"], ["a>g", "g>d"], [group("g", ["b", "c"])]))
    assert ready_nodes(await run.finish("a")) == ["b", "c"]
    assert ready_nodes(await run.finish("b")) == []
    assert ready_nodes(await run.finish("c")) == ["d"]
    assert (await run.states())["g"] == "SUCCEEDED"
    assert (await run.finish("d")).run_status == "SUCCEEDED"


async def test_strict_group_fails_the_run_at_its_first_failed_member(store):
    run = await RunHarness.create(store, spec(["a", "b", "c", "d"], ["g>d"], [group("g", ["a", "b", "c"])]))
    await run.finish("a")
    result = await run.finish("b", ok=False)
    assert (result.run_status, result.ready) == ("FAILED", ())
    meta = await run.meta()
    assert meta["failed_node"] == b"g"
    error = run_error(meta)
    assert error.type == "GroupFailed"
    assert "group 'g' failed (policy strict)" in error.message
    assert "failed members: b" in error.message and "succeeded members: a" in error.message
    states = await run.states()
    assert (states["g"], states["b"], states["c"], states["d"]) == ("FAILED", "FAILED", "SKIPPED", "SKIPPED")


async def test_best_effort_group_succeeds_when_all_finished_despite_a_failure(store):
    run = await RunHarness.create(
        store, spec(["a", "b", "d"], ["g>d"], [group("g", ["a", "b"], KIND.KIND_BEST_EFFORT)])
    )
    assert ready_nodes(await run.finish("a", ok=False)) == []
    assert (await run.status()) == "RUNNING"
    assert ready_nodes(await run.finish("b")) == ["d"]
    assert (await run.finish("d")).run_status == "SUCCEEDED"
    assert (await run.states())["a"] == "FAILED"


async def test_at_least_n_group_succeeds_early_and_late_members_still_finish(store):
    run = await RunHarness.create(
        store,
        spec(
            ["a", "b", "c", "d"], ["g>d"], [group("g", ["a", "b", "c"], KIND.KIND_AT_LEAST_N, min_success=2)]
        ),
    )
    await run.finish("a", ok=False)
    await run.finish("b")
    assert ready_nodes(await run.finish("c")) == ["d"]
    assert (await run.finish("d")).run_status == "SUCCEEDED"


async def test_at_least_n_group_releases_before_all_members_finished_and_run_waits_for_them(store):
    run = await RunHarness.create(
        store,
        spec(
            ["a", "b", "c", "d"], ["g>d"], [group("g", ["a", "b", "c"], KIND.KIND_AT_LEAST_N, min_success=1)]
        ),
    )
    assert ready_nodes(await run.finish("a")) == ["d"]
    assert (await run.finish("d")).run_status == "RUNNING"  # b and c still count as pending
    await run.finish("b", ok=False)
    assert (await run.finish("c")).run_status == "SUCCEEDED"


async def test_at_least_n_group_fails_when_n_successes_became_impossible(store):
    run = await RunHarness.create(
        store, spec(["a", "b", "c"], [], [group("g", ["a", "b", "c"], KIND.KIND_AT_LEAST_N, min_success=2)])
    )
    assert (await run.finish("a", ok=False)).run_status == "RUNNING"
    result = await run.finish("b", ok=False)
    assert result.run_status == "FAILED"
    error = run_error(await run.meta())
    assert (
        error.type == "GroupFailed"
        and "at_least_n 2" in error.message
        and "2 of 3 members failed" in error.message
    )


async def test_critical_group_ignores_a_non_critical_failure(store):
    run = await RunHarness.create(
        store, spec(["a", "b", "d"], ["g>d"], [group("g", ["a", "b"], KIND.KIND_CRITICAL, critical=["a"])])
    )
    await run.finish("b", ok=False)
    assert ready_nodes(await run.finish("a")) == ["d"]


async def test_critical_group_fails_when_a_critical_member_fails(store):
    run = await RunHarness.create(
        store, spec(["a", "b", "d"], ["g>d"], [group("g", ["a", "b"], KIND.KIND_CRITICAL, critical=["a"])])
    )
    await run.finish("b")
    assert (await run.finish("a", ok=False)).run_status == "FAILED"
    meta = await run.meta()
    assert meta["failed_node"] == b"g"
    assert "a critical member failed" in run_error(meta).message


async def test_stale_attempt_changes_nothing(store):
    run = await RunHarness.create(store, spec(["a", "b"], ["a>b"]))
    before = (await run.states(), await run.events())
    result = await run.finish("a", attempt=2)
    assert (result.code, result.ready) == ("stale", ())
    assert (await run.states(), await run.events()) == before


async def test_duplicate_outcome_changes_nothing_and_returns_the_ready_successors(store):
    run = await RunHarness.create(store, spec(["a", "b", "c"], ["a>b", "a>c"]))
    await run.finish("a")
    before = (await run.states(), await run.events(), await run.meta())
    again = await run.finish("a")
    assert again.code == "duplicate"
    assert again.ready == (("b", 1), ("c", 1))
    assert (await run.states(), await run.events(), await run.meta()) == before
    await run.finish("b")
    assert (await run.finish("a")).ready == (("c", 1),)


async def test_retry_bumps_the_attempt_and_keeps_the_node_ready(store):
    run = await RunHarness.create(store, spec(["a"]))
    result = await run.finish("a", ok=False, retry_delay_ms=250)
    assert (result.code, result.retry) == ("applied", ("a", 2, 250, 0))
    assert (await run.states())["a"] == "READY"
    assert (await run.events())[-1] == ("NODE_RETRYING", "a")
    assert (await run.finish("a", attempt=1)).code == "stale"
    assert (await run.finish("a", attempt=2)).run_status == "SUCCEEDED"


async def test_redelivered_failure_of_a_retried_attempt_repeats_the_retry_dispatch(store):
    run = await RunHarness.create(store, spec(["a"]))
    await run.finish("a", ok=False, retry_delay_ms=100)
    events = await run.events()
    again = await run.finish("a", ok=False, retry_delay_ms=100)
    assert (again.code, again.retry) == ("stale", ("a", 2, 100, 0))
    assert await run.events() == events


async def test_an_attempt_lost_with_its_worker_is_retried_now_and_counted_as_lost(store):
    run = await RunHarness.create(store, spec(["a"]))
    lost = common_pb2.ErrorInfo(type="WorkerLost", message="worker w1 was declared dead", retryable=True)

    first = await run.finish("a", ok=False, error=lost, retry_delay_ms=0, worker_lost=True)
    second = await run.finish("a", attempt=2, ok=False, error=lost, retry_delay_ms=0, worker_lost=True)

    assert (first.retry, second.retry) == (("a", 2, 0, 1), ("a", 3, 0, 2))
    assert await store.redis.hget(keys.run_joins(run.run_id), "a:lost") == b"2"
    events = await store.redis.xrange(keys.run_events(run.run_id))
    [message] = [f[b"m"] for _, f in events if f[b"t"] == b"NODE_RETRYING"][-1:]
    assert message == b"attempt 2 was lost with its worker; attempt 3 starts now (lost 2 times)"
    # A real failure afterwards keeps the count (and reports it for the next envelope).
    failed = await run.finish("a", attempt=3, ok=False, retry_delay_ms=50)
    assert failed.retry == ("a", 4, 50, 2)
    # The lost report of attempt 3 arriving late (its worker committed first) changes nothing.
    late = await run.finish("a", attempt=3, ok=False, error=lost, retry_delay_ms=0, worker_lost=True)
    assert late.code == "stale"
    assert await store.redis.hget(keys.run_joins(run.run_id), "a:lost") == b"2"


async def test_task_failure_without_retry_fails_the_run_with_node_and_error(store):
    run = await RunHarness.create(store, spec(["a", "b"], ["a>b"]))
    error = common_pb2.ErrorInfo(type="KeyError", message="no such key", retryable=False)
    result = await run.finish("a", ok=False, error=error)
    assert result.run_status == "FAILED"
    meta = await run.meta()
    assert meta["failed_node"] == b"a"
    assert run_error(meta) == error
    assert (await run.states()) == {"a": "FAILED", "b": "SKIPPED"}
    assert (await run.events())[-2:] == [("NODE_FAILED", "a"), ("RUN_FAILED", "a")]


async def test_failed_sink_task_fails_the_run(store):
    run = await RunHarness.create(store, spec(["a", "b"]))
    assert (await run.finish("a", ok=False)).run_status == "FAILED"


async def test_outcomes_after_the_run_ended_are_ignored(store):
    run = await RunHarness.create(store, spec(["a", "b"]))
    await run.finish("a", ok=False)
    assert (await run.finish("b")).code == "ignored"
    assert (await run.states())["b"] == "SKIPPED"


@pytest.mark.parametrize("members", [1000])
async def test_fan_in_of_many_members_releases_the_join_exactly_once(store, members):
    ids = [f"m{i}" for i in range(members)]
    run = await RunHarness.create(
        store, spec(["root", *ids, "join"], ["root>g", "g>join"], [group("g", ids)])
    )
    assert len((await run.finish("root")).ready) == members
    released = []
    for member in ids:
        released.extend(ready_nodes(await run.finish(member)))
        released.extend(ready_nodes(await run.finish(member)))  # redelivered: READY successors again
    assert released.count("join") == 2  # last member once, its duplicate once; no earlier release
    assert [e for e in await run.events() if e == ("NODE_READY", "join")] == [("NODE_READY", "join")]
    assert (await run.finish("join")).run_status == "SUCCEEDED"
