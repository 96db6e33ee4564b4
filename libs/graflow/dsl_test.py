import pytest

from graflow import (
    RetryPolicy,
    WorkflowDefinitionError,
    at_least,
    best_effort,
    chain,
    critical,
    parallel,
    task,
    workflow,
)
from graflow_api.v1 import workflow_pb2


@task
def fetch() -> int:
    return 1


@task
def clean(fetch: int) -> int:
    return fetch + 1


@task
def enrich(fetch: int) -> int:
    return fetch * 10


@task(id="report_v2", retry=RetryPolicy(max_attempts=4, initial_interval=0.5), timeout=30, queue="reports")
def report(clean: int, enrich: int) -> dict:
    return {"sum": clean + enrich}


def edges(spec: workflow_pb2.WorkflowSpec) -> set[tuple[str, str]]:
    return {(e.from_id, e.to_id) for e in spec.edges}


def test_sequence_and_group_become_nodes_edges_and_a_strict_group():
    with workflow("etl") as wf:
        fetch >> (clean | enrich) >> report
    spec = wf.spec()
    assert sorted(n.id for n in spec.nodes) == ["clean", "enrich", "fetch", "report_v2"]
    assert len(spec.groups) == 1
    group = spec.groups[0]
    assert list(group.member_ids) == ["clean", "enrich"]
    assert group.policy.kind == workflow_pb2.GroupPolicy.KIND_STRICT
    assert edges(spec) == {("fetch", group.id), (group.id, "report_v2")}


def test_task_options_reach_the_node_spec():
    with workflow("w") as wf:
        wf.add(report)
    node = wf.spec().nodes[0]
    assert node.task_type == "report_v2"
    assert node.retry.max_attempts == 4
    assert node.retry.initial_interval_ms == 500
    assert node.timeout_ms == 30_000
    assert node.queue == "reports"


def test_bound_arguments_create_named_nodes_with_json_args():
    with workflow("w") as wf:
        clean(task_id="c1", fetch=3) >> clean(task_id="c2", fetch=4)
    spec = wf.spec()
    assert [(n.id, n.task_type, n.args_json) for n in spec.nodes] == [
        ("c1", "clean", b'{"fetch":3}'),
        ("c2", "clean", b'{"fetch":4}'),
    ]
    assert edges(spec) == {("c1", "c2")}


def test_a_bound_node_created_inside_a_workflow_belongs_to_it():
    with workflow("w") as wf:
        clean(task_id="lonely", fetch=1)
    assert [n.id for n in wf.spec().nodes] == ["lonely"]


def test_calling_a_task_without_task_id_runs_it_locally():
    assert clean(fetch=2) == 3


def test_diamond_without_group_and_several_roots():
    with workflow("w") as wf:
        fetch >> clean >> report
        fetch >> enrich >> report
        wf.add(clean(task_id="other_root", fetch=1))
    spec = wf.spec()
    assert edges(spec) == {
        ("fetch", "clean"), ("clean", "report_v2"), ("fetch", "enrich"), ("enrich", "report_v2"),
    }
    assert "other_root" in {n.id for n in spec.nodes}


def test_chained_pipes_make_one_group():
    with workflow("w") as wf:
        fetch >> (clean | enrich | report)
    spec = wf.spec()
    assert len(spec.groups) == 1
    assert list(spec.groups[0].member_ids) == ["clean", "enrich", "report_v2"]


def test_chain_and_parallel_helpers_with_policies():
    with workflow("w") as wf:
        chain(fetch, parallel(clean, enrich, name="work", policy=at_least(1)), report)
    spec = wf.spec()
    assert spec.groups[0].id == "work"
    assert spec.groups[0].policy.kind == workflow_pb2.GroupPolicy.KIND_AT_LEAST_N
    assert spec.groups[0].policy.min_success == 1
    assert edges(spec) == {("fetch", "work"), ("work", "report_v2")}


def test_graflow_with_execution_spelling_and_critical_policy():
    with workflow("w") as wf:
        g = (clean | enrich).with_execution(policy="best_effort")
        assert g.policy == best_effort()
        fetch >> g.with_execution(policy=critical(clean))
    assert list(wf.spec().groups[0].policy.critical_ids) == ["clean"]


def test_fan_out_of_many_bound_nodes():
    with workflow("fan") as wf:
        fetch >> parallel(*[clean(task_id=f"c{i}", fetch=i) for i in range(1000)]) >> report
    spec = wf.spec()
    assert len(spec.nodes) == 1002
    assert len(spec.groups[0].member_ids) == 1000


def test_same_id_for_two_different_tasks_is_rejected():
    with workflow("w"), pytest.raises(WorkflowDefinitionError, match="node id 'x'"):
        clean(task_id="x", fetch=1) >> enrich(task_id="x", fetch=1)


def test_graph_operators_outside_a_workflow_are_rejected():
    with pytest.raises(WorkflowDefinitionError, match="inside `with workflow"):
        fetch >> clean


def test_invalid_ids_and_positional_bindings_are_rejected():
    with pytest.raises(WorkflowDefinitionError, match="task_id 'a b'"):
        clean(task_id="a b")
    with pytest.raises(WorkflowDefinitionError, match="by keyword"):
        clean(1, task_id="t")


def test_unserializable_arguments_are_rejected_at_definition():
    from graflow import PayloadError

    with workflow("w"), pytest.raises(PayloadError, match="can't be sent as JSON"):
        clean(task_id="t", fetch=object())


def test_empty_workflow_is_rejected():
    with workflow("w") as wf:
        pass
    with pytest.raises(WorkflowDefinitionError, match="no tasks"):
        wf.spec()
