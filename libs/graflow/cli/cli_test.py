"""The `graflow` command: offline behaviour, then end to end against a real local stack."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from graflow import Client, ServiceUnavailableError, Workflow
from graflow.cli.base import UsageError
from graflow.cli.runs import format_event
from graflow.cli.testing.capture import Captured, read_dev_exports
from graflow.cli.workflows import load_workflow
from graflow.devstack import LocalStack
from graflow.run import RunEvent
from graflow_examples import EXAMPLES, TASK_MODULES, etl
from graflow_runtime.local_redis import free_port
from graflow_runtime.testing.certs import make_ca


@pytest.fixture
def cli() -> Captured:
    return Captured()


# ---- offline ----
def test_load_workflow_accepts_a_workflow_or_a_function_returning_one():
    assert isinstance(load_workflow("graflow_examples.etl:etl"), Workflow)
    assert load_workflow("graflow_examples.resilience:retrying").name == "retrying"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("graflow_examples.etl", "is not MODULE:WORKFLOW"),
        ("no_such_module_xyz:wf", "cannot import 'no_such_module_xyz'"),
        ("graflow_examples.etl:nope", "has no attribute 'nope'"),
        ("graflow_examples.etl:ORDERS", "is a list, not a graflow Workflow"),
    ],
)
def test_load_workflow_explains_bad_targets(target, message):
    with pytest.raises(UsageError, match=message):
        load_workflow(target)


def test_unreachable_scheduler_exits_2_with_a_hint(cli):
    address = f"127.0.0.1:{free_port()}"
    assert cli("--scheduler", address, "--timeout", "5", "runs") == 2
    assert f"cannot reach the scheduler at {address}: is it running?" in cli.err
    assert "graflow dev --keep" in cli.err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--redis-cluster", "--redis-cluster-url", "redis://127.0.0.1:7000/0"], "give one of them"),
        (["--redis-cluster", "--redis-tls", *[__file__] * 3], "applies to the single redis-server"),
        (["--redis-cluster-url", "redis://127.0.0.1:7000/0", "--redis-acl"], "not into --redis-cluster-url"),
    ],
)
def test_dev_cluster_flags_that_do_not_go_together_are_usage_errors(cli, flags, message):
    assert cli("dev", "--any-ports", *flags) == 2
    assert message in cli.err


def test_a_bad_entry_in_a_list_of_replicas_exits_2_naming_it(cli):
    assert cli("--scheduler", "127.0.0.1:50051,scheduler-2", "runs") == 2
    assert "entry 'scheduler-2' is not host:port" in cli.err


def test_unknown_status_filter_is_a_usage_error(cli):
    assert cli("--scheduler", "127.0.0.1:1", "runs", "--status", "exploded") == 2
    assert "unknown run status 'exploded'" in cli.err


def test_missing_command_is_a_usage_error(cli):
    code = cli()
    assert code == 2
    assert "Usage: graflow" in cli.err


def test_events_print_as_one_line_with_time_node_event_and_attempt():
    event = RunEvent(type=RunEvent.TYPE_NODE_FAILED, node_id="clean", attempt=2, at_ms=1_700_000_000_123)
    event.error.type, event.error.message = "ValueError", "bad row"
    line = format_event(event)
    assert line.endswith("clean                 NODE_FAILED      attempt 2   ValueError: bad row")
    assert line[:12].count(":") == 2 and line[8] == "."


# ---- against a running stack ----
@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(workers=1, task_modules=TASK_MODULES) as running:
        yield running


@pytest.fixture
def stack_cli(stack: LocalStack, monkeypatch) -> Captured:
    for name, value in stack.client_env().items():
        monkeypatch.setenv(name, value)
    return Captured()


def test_submit_wait_prints_run_id_events_and_result(stack_cli):
    assert stack_cli("submit", "graflow_examples.etl:etl", "--wait") == 0
    lines = stack_cli.out.splitlines()
    run_id = lines[0]
    assert any("report" in line and "NODE_SUCCEEDED" in line for line in lines)
    assert f"run {run_id} SUCCEEDED, result:" in stack_cli.out
    assert '"EMEA": 242.5' in stack_cli.out


def test_status_watch_and_runs_show_a_finished_run(stack_cli):
    assert stack_cli("submit", "graflow_examples.etl:etl", "--wait") == 0
    run_id = stack_cli.out.splitlines()[0]
    status = Captured()
    assert status("status", run_id) == 0
    assert "status    SUCCEEDED" in status.out
    assert any(line.split()[:3] == ["enrich", "task", "SUCCEEDED"] for line in status.out.splitlines())
    watch = Captured()
    assert watch("watch", run_id) == 0
    assert "RUN_SUCCEEDED" in watch.out
    runs = Captured()
    assert runs("runs", "--limit", "50", "--status", "succeeded") == 0
    assert run_id in runs.out


def test_a_failed_run_exits_1_and_shows_the_error(stack_cli):
    assert stack_cli("submit", "graflow_examples.resilience:failing", "--wait") == 1
    assert "FAILED at validate" in stack_cli.out
    run_id = stack_cli.out.splitlines()[0]
    status = Captured()
    assert status("status", run_id) == 1
    assert "threshold must be >= 0" in status.out


def test_cancel_stops_a_running_run(stack_cli):
    assert stack_cli("submit", "graflow_examples.resilience:slow") == 0
    run_id = stack_cli.out.strip()
    cancel = Captured()
    assert cancel("cancel", run_id) == 0
    watch = Captured()
    assert watch("watch", run_id) == 1
    assert "canceled" in watch.out


def test_unknown_run_exits_2(stack_cli):
    assert stack_cli("status", "no-such-run") == 2
    assert "no-such-run" in stack_cli.err


def test_json_output_of_submit_status_runs_and_watch_is_what_jq_reads(stack_cli):
    assert stack_cli("submit", "graflow_examples.etl:etl", "--wait", "-o", "json") == 0
    submitted = json.loads(stack_cli.out)
    assert submitted["status"] == "SUCCEEDED"
    assert submitted["result"] == etl.EXPECTED_REPORT
    run_id = submitted["run_id"]
    status = Captured()
    assert status("status", run_id, "--output", "json") == 0
    info = json.loads(status.out)
    assert (info["run_id"], info["status"]) == (run_id, "SUCCEEDED")
    assert {n["node_id"]: n["state"] for n in info["nodes"]}["report"] == "SUCCEEDED"
    assert isinstance(info["created_at_ms"], int)
    runs = Captured()
    assert runs("runs", "--limit", "50", "-o", "json") == 0
    assert run_id in [r["run_id"] for r in json.loads(runs.out)]
    watch = Captured()
    assert watch("watch", run_id, "-o", "json") == 0
    events = [json.loads(line) for line in watch.out.splitlines()]
    assert (events[0]["type"], events[-1]["type"]) == ("RUN_CREATED", "RUN_SUCCEEDED")


def test_submit_args_parameterise_the_run(stack_cli):
    assert stack_cli("submit", "graflow_examples.resilience:slow", "--arg", "nap.seconds=0.1", "--wait") == 0
    assert '"slept 0.1 s"' in stack_cli.out


def test_status_graph_draws_the_runs_nodes_with_their_states(stack_cli):
    assert stack_cli("submit", "graflow_examples.etl:etl", "--wait") == 0
    run_id = stack_cli.out.splitlines()[0]
    drawing = Captured()
    assert drawing("status", run_id, "--graph", "mermaid") == 0
    assert drawing.out.startswith("flowchart TD\n")
    assert '["report · SUCCEEDED"]' in drawing.out and " --> " in drawing.out
    piped = Captured()
    assert piped("status", run_id, "--graph") == 0  # not a terminal: mermaid
    assert piped.out == drawing.out
    tree = Captured()
    assert tree("status", run_id, "--graph", "ascii") == 0
    assert tree.out.splitlines()[:2] == [f"run {run_id} (etl) SUCCEEDED", "└── fetch  SUCCEEDED"]


def test_a_task_type_no_worker_of_its_queue_knows_fails_the_run_saying_what_to_start(
    stack_cli, tmp_path, monkeypatch
):
    (tmp_path / "unknown_tasks.py").write_text(
        "from graflow import task, workflow\n"
        "@task\n"
        "def mystery() -> int:\n"
        "    return 1\n"
        "with workflow('mystery') as wf:\n"
        "    wf.add(mystery)\n"
    )
    monkeypatch.chdir(tmp_path)
    assert stack_cli("submit", "unknown_tasks:wf", "--wait") == 1
    assert "UnknownTaskType: task type 'mystery' is not registered in worker dev-worker-0" in stack_cli.out
    assert "graflow worker -A YOUR_TASK_MODULE -Q QUEUE" in stack_cli.err


def run_dev(*flags: str) -> subprocess.CompletedProcess[str]:
    """``graflow dev --workers 1 --any-ports FLAGS...`` in a process of its own, to its end."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run(
        [sys.executable, "-m", "graflow.cli", "dev", "--workers", "1", "--any-ports", *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_dev_command_runs_the_example_on_its_own_stack_and_stops_it():
    done = run_dev()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCEEDED, result:" in done.stdout
    assert '"orders": 3' in done.stdout
    assert done.stdout.rstrip().endswith("stopping the stack...")  # logs of a good run are removed


def test_dev_with_redis_acl_and_tls_runs_the_example_on_a_closed_redis(tmp_path):
    ca = make_ca(tmp_path)
    server = ca.issue("redis")
    done = run_dev(
        "--redis-acl", "--redis-tls", str(ca.cert), str(server.cert), str(server.key), "--metrics"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCEEDED, result:" in done.stdout
    # --metrics: each process (3 servers, 1 worker) serves /metrics on a port of its own.
    urls = re.findall(r"^metrics of (\S+): (http://127\.0\.0\.1:\d+/metrics)$", done.stdout, re.MULTILINE)
    assert sorted(name for name, _ in urls) == ["coordinator", "result-store", "scheduler", "worker-0"]
    assert len({url for _, url in urls}) == 4


def test_dev_on_a_local_redis_cluster_with_acl_users_runs_the_example():
    done = run_dev("--redis-cluster", "--redis-acl", "--redis-cells", "4")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "starting a Redis Cluster," in done.stdout
    assert "SUCCEEDED, result:" in done.stdout


def test_dev_keep_serves_clients_until_interrupted_then_stops_every_process():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    dev = subprocess.Popen(
        [sys.executable, "-m", "graflow.cli", "dev", "--workers", "1", "--keep", "--any-ports"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert dev.stdout is not None
        exports = read_dev_exports(dev.stdout)
        assert set(exports) == {
            "GRAFLOW_CLIENT_SCHEDULER_ADDRESS",
            "GRAFLOW_CLIENT_RESULT_STORE_ADDRESS",
            "GRAFLOW_CLIENT_COORDINATOR_ADDRESS",
            "GRAFLOW_WORKER_REDIS_URL",
            "GRAFLOW_WORKER_SCHEDULER_ADDRESS",
            "GRAFLOW_WORKER_COORDINATOR_ADDRESS",
            "GRAFLOW_WORKER_RESULT_STORE_ADDRESS",
        }
        assert exports["GRAFLOW_WORKER_SCHEDULER_ADDRESS"] == exports["GRAFLOW_CLIENT_SCHEDULER_ADDRESS"]
        scheduler, result_store = (
            exports["GRAFLOW_CLIENT_SCHEDULER_ADDRESS"], exports["GRAFLOW_CLIENT_RESULT_STORE_ADDRESS"]
        )
        with Client(scheduler, result_store) as client:
            assert [r.workflow_name for r in client.list_runs()] == ["etl"]
            # Registered for the console (and `graflow workflows submit NAME`).
            assert [w.name for w in client.list_workflows()] == sorted(EXAMPLES)
        dev.send_signal(signal.SIGINT)
        assert dev.wait(timeout=60) == 0
        with Client(exports["GRAFLOW_CLIENT_SCHEDULER_ADDRESS"], timeout=2) as client:
            with pytest.raises(ServiceUnavailableError):
                client.list_runs()
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
