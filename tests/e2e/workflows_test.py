"""End to end: workflows submitted through the SDK run on real worker processes."""

from __future__ import annotations

import grpc
import pytest
import redis

from graflow import RunFailedError, WorkflowDefinitionError, parallel, workflow
from graflow.devstack import LocalStack
from graflow_api.v1 import messages_pb2, scheduler_pb2, scheduler_pb2_grpc, workflow_pb2
from graflow_api.v1 import result_store_pb2 as rs_pb2
from graflow_api.v1 import result_store_pb2_grpc as rs_grpc
from graflow_runtime import keys
from tests.e2e.tasks import (
    add_one,
    blob,
    collect,
    double,
    echo,
    explode,
    flaky,
    item,
    join,
    left,
    pair,
    refuse,
    right,
    source,
)


def test_sequence_passes_each_result_to_the_next_task_by_name(client, effects):
    with workflow("sequence") as wf:
        source(task_id="source", value=4) >> add_one >> double
    run = client.submit(wf)
    assert run.result(timeout=30) == 10
    assert effects(run.id) == {"source": 1, "add_one": 1, "double": 1}


def test_parallel_group_with_strict_join_gives_the_join_both_results(client, effects):
    with workflow("group") as wf:
        source >> (left | right) >> join
    run = client.submit(wf)
    assert run.result(timeout=30) == {"left": 11, "right": 101, "sum": 112}
    assert effects(run.id) == {"source": 1, "left": 1, "right": 1, "join": 1}


def test_diamond_join_runs_once_with_both_inputs(client, effects):
    with workflow("diamond") as wf:
        source >> left >> join
        source >> right >> join
    run = client.submit(wf)
    assert run.result(timeout=30)["sum"] == 112
    assert effects(run.id)["join"] == 1


def test_several_roots_all_run_and_every_sink_is_a_result(client, effects):
    with workflow("roots") as wf:
        source(task_id="a", value=1)
        source(task_id="b", value=2)
        source(task_id="c", value=3) >> add_one(task_id="d")
    run = client.submit(wf)
    assert run.result(timeout=30) == {"a": 1, "b": 2, "d": 4}


def test_fan_out_of_1000_tasks_into_one_join(client, effects):
    with workflow("fan") as wf:
        source >> parallel(*[item(task_id=f"i{i}", i=i) for i in range(1000)]) >> collect
    run = client.submit(wf)
    assert run.result(timeout=120) == {"count": 1000, "total": sum(range(1000))}
    counts = effects(run.id)
    assert len(counts) == 1002
    assert set(counts.values()) == {1}


def outcomes_of(fx: redis.Redis, run_id: str) -> dict[str, messages_pb2.TaskOutcome]:
    """node id -> its run's last outcome on gf:outcomes (not trimmed this soon: the stream is trimmed
    only below the oldest entry the scheduler still needs, in whole macro nodes)."""
    found = {}
    for _, fields in fx.xrange(keys.OUTCOMES_STREAM):
        outcome = messages_pb2.TaskOutcome.FromString(fields[keys.OUTCOME_FIELD])
        if outcome.run_id == run_id:
            found[outcome.node_id] = outcome
    return found


def test_results_below_and_above_the_inline_limit_reach_the_downstream_task_and_the_caller(client, fx):
    """The workers' default INLINE_RESULT_MAX_BYTES (64 KiB): a 100-character result rides in its
    outcome and is stored by the scheduler, a 100,000-character one goes through PutResults; both
    reach the task downstream (GetResults) and run.result() (WaitRun)."""
    small, large = "x" * 100, "x" * 100_000
    with workflow("inline-results") as wf:
        (blob(task_id="small", size=100) | blob(task_id="large", size=100_000)) >> pair
        blob(task_id="small_sink", size=100)
        blob(task_id="large_sink", size=100_000)
    run = client.submit(wf)
    assert run.result(timeout=30) == {
        "pair": {"small": small, "large": large}, "small_sink": small, "large_sink": large,
    }
    sent = outcomes_of(fx, run.id)
    assert sent["small"].has_result and sent["small"].HasField("result")
    assert sent["small_sink"].HasField("result")
    assert sent["large"].has_result and not sent["large"].HasField("result")
    assert not sent["large_sink"].HasField("result")


def test_a_put_results_of_an_older_attempt_does_not_replace_a_result_stored_inline(client, stack):
    """Attempt 2 of a flaky task succeeds with a small result, stored by the scheduler; a late
    PutResults of attempt 1 (a worker that was presumed dead) is STALE for the result-store."""
    with workflow("inline-then-late-put") as wf:
        wf.add(flaky(task_id="f", fail_times=1))
    run = client.submit(wf)
    assert run.result(timeout=30) == 2
    late = rs_pb2.NodeResult(run_id=run.id, node_id="f", attempt=1, worker_id="presumed-dead")
    late.value.data = b"1"
    with grpc.insecure_channel(stack.result_store_address) as channel:
        store = rs_grpc.ResultStoreStub(channel)
        put = store.PutResults(rs_pb2.PutResultsRequest(results=[late]), timeout=10)
        got = store.GetResults(rs_pb2.GetResultsRequest(run_id=run.id, node_ids=["f"]), timeout=10)
    assert list(put.dispositions) == [rs_pb2.PutResultsResponse.DISPOSITION_STALE]
    assert [(r.attempt, r.value.data) for r in got.results] == [(2, b"2")]


def test_json_arguments_and_results_round_trip(client):
    payload = {"text": "héllo", "n": [1, 2.5, None, True], "nested": {"k": ["v"]}}
    with workflow("json") as wf:
        wf.add(echo(task_id="e", payload=payload))
    assert client.submit(wf).result(timeout=30) == {"echo": payload, "node": "e"}


def test_a_raising_task_fails_the_run_with_node_type_message_and_traceback(client, effects):
    with workflow("fails") as wf:
        source >> explode(task_id="bad", message="disk on fire") >> double
    run = client.submit(wf)
    with pytest.raises(RunFailedError) as failure:
        run.result(timeout=30)
    assert failure.value.error.node_id == "bad"
    assert failure.value.error.type == "ValueError"
    assert failure.value.error.message == "disk on fire"
    assert "raise ValueError(message)" in failure.value.error.traceback
    assert run.status == "FAILED"
    info = client.get_run(run.id)
    assert info.failed_node_id == "bad"
    assert "double" not in effects(run.id)


def test_retry_policy_retries_transient_failures_with_new_attempts(client, effects):
    with workflow("retry") as wf:
        wf.add(flaky(task_id="f", fail_times=2))
    run = client.submit(wf)
    assert run.result(timeout=30) == 3
    assert effects(run.id) == {"f": 3}


def test_non_retryable_error_fails_at_once_despite_retry_policy(client, effects):
    with workflow("refuse") as wf:
        wf.add(refuse)
    run = client.submit(wf)
    with pytest.raises(RunFailedError, match="NonRetryableError"):
        run.result(timeout=30)
    assert effects(run.id) == {"refuse": 1}


def test_unknown_task_type_fails_the_run_with_a_clear_error(stack: LocalStack):
    spec = workflow_pb2.WorkflowSpec(name="unknown", nodes=[node("x", "no_such_task")])
    with stack.client() as client:
        run = client.submit(spec)
        with pytest.raises(RunFailedError) as failure:
            run.result(timeout=30)
    assert failure.value.error.type == "UnknownTaskType"
    assert "no_such_task" in failure.value.error.message


def node(node_id: str, task_type: str = "source", args_json: bytes = b"") -> workflow_pb2.NodeSpec:
    return workflow_pb2.NodeSpec(id=node_id, task_type=task_type, args_json=args_json)


def edge(src: str, dst: str) -> workflow_pb2.EdgeSpec:
    return workflow_pb2.EdgeSpec(from_id=src, to_id=dst)


INVALID_SPECS = {
    "cycle": workflow_pb2.WorkflowSpec(
        name="w", nodes=[node("a"), node("b")], edges=[edge("a", "b"), edge("b", "a")]
    ),
    "unknown": workflow_pb2.WorkflowSpec(name="w", nodes=[node("a")], edges=[edge("a", "ghost")]),
    "duplicate": workflow_pb2.WorkflowSpec(name="w", nodes=[node("a"), node("a", "double")]),
    "json": workflow_pb2.WorkflowSpec(name="w", nodes=[node("a", args_json=b"{not json")]),
    "empty": workflow_pb2.WorkflowSpec(name="w"),
    "size": workflow_pb2.WorkflowSpec(
        name="w", nodes=[node("a", args_json=b'{"v":"' + b"x" * (2 << 20) + b'"}')]
    ),
}


@pytest.mark.parametrize(("case", "needle"), [
    ("cycle", "cycle"), ("unknown", "ghost"), ("duplicate", "duplicate"), ("json", "JSON"),
    ("empty", "no nodes"), ("size", "bytes"),
])
def test_invalid_workflows_are_rejected_whole_and_nothing_is_stored(stack: LocalStack, case, needle):
    conn = redis.Redis.from_url(stack.redis_url)
    before = {k for k in conn.scan_iter(match="gf:*")}
    channel = grpc.insecure_channel(stack.scheduler_address)
    stub = scheduler_pb2_grpc.SchedulerStub(channel)
    with pytest.raises(grpc.RpcError) as error:
        stub.SubmitRun(scheduler_pb2.SubmitRunRequest(spec=INVALID_SPECS[case]), timeout=10)
    channel.close()
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle.lower() in error.value.details().lower()
    assert {k for k in conn.scan_iter(match="gf:*")} == before


def test_sdk_raises_a_definition_error_for_a_rejected_workflow(client):
    with pytest.raises(WorkflowDefinitionError, match="cycle"):
        client.submit(INVALID_SPECS["cycle"])


def test_watch_streams_events_to_the_end_and_resumes_from_a_cursor(client):
    with workflow("watch") as wf:
        source >> add_one
    run = client.submit(wf)
    events = list(run.watch())
    kinds = [scheduler_pb2.RunEvent.Type.Name(e.type) for e in events]
    assert kinds[0] == "TYPE_RUN_CREATED"
    assert kinds[-1] == "TYPE_RUN_SUCCEEDED"
    resumed = list(run.watch(cursor=events[1].cursor))
    assert [e.cursor for e in resumed] == [e.cursor for e in events[2:]]


def test_idempotency_key_returns_the_same_run(client):
    with workflow("idem") as wf:
        wf.add(source)
    first = client.submit(wf, idempotency_key="order-42")
    second = client.submit(wf, idempotency_key="order-42")
    assert first.id == second.id
    assert first.result(timeout=30) == 1
