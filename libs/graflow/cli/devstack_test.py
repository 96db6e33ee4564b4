"""End to end: the four services as real processes on a private Redis, driven through the SDK."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from graflow import (
    GroupFailedError,
    RunCanceledError,
    RunFailedError,
    RunNotFoundError,
    ServiceUnavailableError,
    WorkflowDefinitionError,
    best_effort,
    parallel,
    workflow,
)
from graflow.cli.devstack import PREFIXES
from graflow.devstack import LocalStack, LocalStackError
from graflow.run import RunEvent, event_type_name
from graflow_api.v1 import common_pb2, workflow_pb2
from graflow_examples import TASK_MODULES, etl, fanout, resilience
from graflow_runtime.local_redis import LocalRedis


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(workers=2, task_modules=TASK_MODULES) as running:
        yield running


@pytest.fixture
def client(stack: LocalStack):
    with stack.client(timeout=20) as client:
        yield client


def kinds(events) -> list[str]:
    return [event_type_name(e.type) for e in events]


def test_etl_example_runs_to_its_report(client):
    run = client.submit(etl.etl)
    assert run.created is True
    assert run.result(timeout=60) == etl.EXPECTED_REPORT
    assert run.status == "SUCCEEDED"
    assert set(run.results()) == {"fetch", "clean", "enrich", "report"}
    assert run.results(["clean"]) == {"clean": etl.clean(fetch=etl.fetch())}


def test_watch_streams_the_history_and_resumes_from_a_cursor(client):
    run = client.submit(etl.etl)
    events = list(run.watch())
    assert kinds(events)[0] == "RUN_CREATED"
    assert kinds(events)[-1] == "RUN_SUCCEEDED"
    succeeded = {e.node_id for e in events if e.type == RunEvent.TYPE_NODE_SUCCEEDED}
    assert {"fetch", "clean", "enrich", "report"} <= succeeded
    resumed = list(run.watch(events[2].cursor))
    assert [e.cursor for e in resumed] == [e.cursor for e in events[3:]]


def test_several_sinks_give_a_dict_by_node_id(client):
    with workflow("two_sinks") as wf:
        etl.fetch >> etl.clean
        etl.fetch >> etl.enrich
    assert client.submit(wf).result(timeout=60) == {
        "clean": etl.clean(fetch=etl.fetch()),
        "enrich": {"ada": "EMEA", "grace": "AMER", "linus": "EMEA"},
    }


def test_fanout_joins_every_item(client):
    assert client.submit(fanout.build_fanout(10)).result(timeout=60) == {"count": 10, "total": 45}


def test_a_failing_task_fails_the_run_with_its_error(client):
    run = client.submit(resilience.failing())
    with pytest.raises(RunFailedError) as info:
        run.result(timeout=60)
    assert info.value.run_id == run.id
    assert info.value.error.node_id == "validate"
    assert "threshold must be >= 0" in info.value.error.message
    assert run.status == "FAILED"


def test_a_failed_group_reports_its_failed_and_succeeded_members(client):
    with workflow("group_fails") as wf:
        resilience.fetch_config >> parallel(resilience.validate, etl.fetch, name="checks") >> etl.clean
    run = client.submit(wf)
    with pytest.raises(GroupFailedError) as info:
        run.result(timeout=60)
    assert info.value.error.node_id == "checks"
    assert "threshold must be >= 0" in info.value.failed[0].message
    assert [e.node_id for e in info.value.failed] == ["validate"]
    # A strict group fails at its first failure; `fetch` may or may not have finished by then.
    states = {n.node_id: n.state for n in client.get_run(run.id).nodes}
    assert info.value.succeeded == [n for n in ["fetch"] if states[n] == common_pb2.NODE_STATE_SUCCEEDED]


def test_best_effort_group_lets_the_run_go_on_after_a_failure(client):
    with workflow("best_effort") as wf:
        resilience.fetch_config >> parallel(resilience.validate, etl.fetch, policy=best_effort())
    run = client.submit(wf)
    run.result(timeout=60)
    assert run.status == "SUCCEEDED"


def test_a_transient_failure_is_retried(client):
    run = client.submit(resilience.retrying())
    assert run.result(timeout=60) == "3 rows after 2 attempts"
    events = list(run.watch())
    assert "NODE_RETRYING" in kinds(events)


def test_a_canceled_run_raises_run_canceled(client):
    run = client.submit(resilience.slow(2.0))
    info = run.cancel("enough")
    assert info.run_id == run.id
    with pytest.raises(RunCanceledError, match=run.id):
        run.result(timeout=60)
    assert run.status == "CANCELED"


def test_idempotency_key_returns_the_first_run(client):
    first = client.submit(etl.etl, idempotency_key="etl-once", labels={"team": "data"})
    again = client.submit(etl.etl, idempotency_key="etl-once")
    assert (again.id, again.created) == (first.id, False)
    assert client.get_run(first.id).labels["team"] == "data"


def test_an_invalid_spec_is_rejected_with_the_servers_reason(client):
    spec = workflow_pb2.WorkflowSpec(
        name="bad",
        nodes=[workflow_pb2.NodeSpec(id="a", task_type="fetch")],
        edges=[workflow_pb2.EdgeSpec(from_id="a", to_id="ghost")],
    )
    with pytest.raises(WorkflowDefinitionError, match="ghost"):
        client.submit(spec)


def test_unknown_or_malformed_run_ids_are_not_found(client):
    unknown = "0" * 26
    with pytest.raises(RunNotFoundError, match=unknown):
        client.get_run(unknown)
    with pytest.raises(RunNotFoundError, match="no run with id 'no-such-run'"):
        client.run("no-such-run").result(timeout=10)


def test_list_runs_filters_by_status(client):
    run = client.submit(etl.etl)
    run.result(timeout=60)
    assert run.id in [r.run_id for r in client.list_runs(limit=100, status="succeeded")]
    assert run.id not in [r.run_id for r in client.list_runs(limit=100, status="failed")]


def test_runs_finish_after_a_worker_is_killed_and_a_new_one_started(stack, client):
    stack.kill_worker(0)
    assert client.submit(etl.etl).result(timeout=60) == etl.EXPECTED_REPORT
    index = stack.start_worker()
    stack.stop_worker(1)
    assert client.submit(etl.etl).result(timeout=60) == etl.EXPECTED_REPORT
    assert stack.process(f"worker-{index}").running


def test_restarted_scheduler_keeps_its_address_and_state(stack, client):
    before = client.submit(etl.etl)
    before.result(timeout=60)
    stack.restart("scheduler")
    assert client.get_run(before.id).run_id == before.id
    assert client.submit(etl.etl).result(timeout=60) == etl.EXPECTED_REPORT


def test_log_tail_shows_json_lines_and_unknown_names_are_refused(stack):
    line = stack.log_tail("result-store", lines=50).splitlines()[0]
    assert "event" in json.loads(line)
    with pytest.raises(LocalStackError, match="no process named 'mystery'"):
        stack.log_tail("mystery")


def test_a_cluster_stack_gives_every_process_the_cluster_and_its_cells(tmp_path):
    url = "redis://127.0.0.1:7000/0"
    given = LocalStack(workers=1, redis_cluster=url, cells=4, log_dir=tmp_path)
    for service, prefix in PREFIXES.items():
        env = given._env(service)
        assert env[f"{prefix}REDIS_URL"] == url
        assert env[f"{prefix}REDIS_CLUSTER"] == "true"
        assert env[f"{prefix}REDIS_CELLS"] == "4"
    assert given.worker_env()["GRAFLOW_WORKER_REDIS_CLUSTER"] == "true"
    with pytest.raises(LocalStackError, match="runs on a Redis Cluster"):
        given.kill("redis")
    single = LocalStack(workers=1, redis_cluster=False, log_dir=tmp_path, redis=LocalRedis(tmp_path))
    assert "GRAFLOW_SCHEDULER_REDIS_CLUSTER" not in single._env("scheduler")
    assert "GRAFLOW_SCHEDULER_REDIS_CELLS" not in single._env("scheduler")
    with pytest.raises(ValueError, match="redis_cluster runs without redis or redis_tls"):
        LocalStack(redis_cluster=True, redis=LocalRedis(tmp_path), log_dir=tmp_path)
    with pytest.raises(ValueError, match="redis_acl applies to a cluster the stack starts"):
        LocalStack(redis_cluster=url, redis_acl=True, log_dir=tmp_path)


def test_a_service_that_cannot_start_is_reported_with_its_log_tail(tmp_path):
    broken = LocalStack(workers=0, env={"GRAFLOW_RESULT_STORE_RETENTION_S": "soon"}, log_dir=tmp_path)
    with pytest.raises(
        LocalStackError, match=r"result-store \(-m graflow_result_store\) exited with code 2"
    ) as info:
        broken.start()
    assert "GRAFLOW_RESULT_STORE_RETENTION_S" in str(info.value)
    assert not broken.process("coordinator").running
    assert broken.redis is None


def test_replicas_get_ports_and_names_of_their_own_and_the_service_address_lists_them(tmp_path):
    stack = LocalStack(workers=0, replicas={"scheduler": 3, "result-store": 1}, log_dir=tmp_path)
    names = ["scheduler", "scheduler-1", "scheduler-2"]
    assert stack.replica_names["scheduler"] == names
    assert stack.scheduler_address == ",".join(stack.replica_address(name) for name in names)
    assert len({stack.ports[name] for name in names}) == 3
    assert "," not in stack.coordinator_address and "," not in stack.result_store_address
    with pytest.raises(ValueError, match="replicas of worker: only result-store, coordinator, scheduler"):
        LocalStack(replicas={"worker": 2}, log_dir=tmp_path)
    with pytest.raises(ValueError, match="replicas must be >= 1 each"):
        LocalStack(replicas={"coordinator": 0}, log_dir=tmp_path)


def test_a_paused_service_answers_nothing_until_resumed(stack):
    with stack.client(timeout=1) as client:
        stack.pause("result-store")
        try:
            with pytest.raises(ServiceUnavailableError, match="result-store"):
                client.channel_keys("0" * 26)
        finally:
            stack.resume("result-store")
        assert client.channel_keys("0" * 26) == []


def test_watch_resumes_after_the_scheduler_restarts_mid_stream(stack, client):
    run = client.submit(resilience.slow(1.0))
    events = []
    for event in run.watch():
        events.append(event)
        if len(events) == 1:
            stack.restart("scheduler", signal.SIGKILL)
    cursors = [e.cursor for e in events]
    context = f"events {kinds(events)}; scheduler log:\n{stack.log_tail('scheduler')}"
    assert len(cursors) == len(set(cursors)), context
    assert kinds(events)[0] == "RUN_CREATED", context
    assert kinds(events)[-1] == "RUN_SUCCEEDED", context
    assert cursors == [e.cursor for e in run.watch()], context


def test_services_exit_when_the_process_that_started_them_is_killed(tmp_path):
    script = (
        "import sys, time\n"
        "from graflow.devstack import LocalStack\n"
        "stack = LocalStack(workers=1, log_dir=sys.argv[1]).start()\n"
        "children = [*stack.servers.values(), *stack.workers]\n"
        "print(stack.redis.process.pid, *(p.pid for p in children), flush=True)\n"
        "time.sleep(600)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    pids = [int(pid) for pid in parent.stdout.readline().split()]
    try:
        assert len(pids) == 5  # redis-server and the four servers (three services, one worker)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in pids if alive(pid)] == []
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # gone since, as it should be
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie or a reaped process counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
