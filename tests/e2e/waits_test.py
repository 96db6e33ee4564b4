"""End to end: human feedback and child runs on real service and worker processes.

A node that waits (for an answer, or for a child run) is parked WAITING and holds no worker; the
run is PAUSED while nothing else can run; the answer (or the child's end) makes the node run again.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
import redis

from graflow import (
    Client,
    FeedbackError,
    RunCanceledError,
    RunFailedError,
    best_effort,
    cli,
    parallel,
    workflow,
)
from graflow.devstack import LocalStack
from graflow.run import event_type_name, node_state_name, status_name
from graflow_api.v1 import feedback_pb2
from graflow_runtime import keys
from tests.e2e.conftest import module_stack, wait_for
from tests.e2e.tasks import (
    ask,
    ask_async,
    fire_child,
    interview,
    ping,
    review_loop,
    spawn_child,
    spawn_waiting_child,
)


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    with module_stack(request, workers=1) as stack:
        yield stack


def node_state(client: Client, run_id: str, node_id: str) -> str:
    return next(node_state_name(n.state) for n in client.get_run(run_id).nodes if n.node_id == node_id)


def pending(client: Client, run_id: str) -> list[feedback_pb2.FeedbackRequest]:
    return client.list_feedback(run_id)


def wait_pending(client: Client, run_id: str, count: int = 1) -> list[feedback_pb2.FeedbackRequest]:
    wait_for(lambda: len(pending(client, run_id)) == count, what=f"{count} pending request(s) of {run_id}")
    return pending(client, run_id)


def test_an_approval_that_arrives_after_the_asking_worker_stopped_resumes_the_task(
    stack: LocalStack, client: Client, fx: redis.Redis
) -> None:
    with workflow("deploy") as wf:
        ask(task_id="approve", prompt="deploy v2 to production?") >> ping(task_id="after")
    run = client.submit(wf)
    (request,) = wait_pending(client, run.id)
    assert (request.request_id, request.node_id, request.prompt) == (
        "approve.0.1",
        "approve",
        "deploy v2 to production?",
    )
    assert request.kind == feedback_pb2.FEEDBACK_KIND_APPROVAL
    assert request.state == feedback_pb2.FEEDBACK_STATE_PENDING
    assert request in client.list_feedback()  # the listing across runs has it too
    # The node holds no worker: the run is PAUSED and the only worker can go away.
    wait_for(lambda: run.status == "PAUSED", what="run PAUSED")
    assert node_state(client, run.id, "approve") == "WAITING"
    stack.stop_worker(0)
    answered = client.respond_feedback(run.id, request.request_id, approved=True, responded_by="alice")
    assert answered.state == feedback_pb2.FEEDBACK_STATE_ANSWERED
    assert answered.response.responded_by == "alice"
    assert status_name(client.get_run(run.id).status) == "RUNNING"  # READY, waiting for a worker
    index = stack.start_worker()  # the stack's only worker from now on
    assert run.result(timeout=60) == 1  # ping's
    result = run.results(["approve"])["approve"]
    assert result["approved"] is True and result["by"] == "alice"
    assert result["worker"] == f"dev-worker-{index}" != "dev-worker-0"
    # Asked once, ran again once with the answer; the effect after the question happened once.
    assert int(fx.get(f"asked:{run.id}:approve")) == 2
    assert int(fx.get(f"effects:{run.id}:approve")) == 1
    types = [event_type_name(e.type) for e in run.watch()]
    assert types.index("NODE_WAITING") < types.index("RUN_PAUSED") < types.index("RUN_RESUMED")
    assert pending(client, run.id) == []


def test_questions_in_turn_and_answers_that_do_not_fit_are_refused(client: Client, fx: redis.Redis) -> None:
    with workflow("interview") as wf:
        interview(task_id="talk")
    run = client.submit(wf)
    (first,) = wait_pending(client, run.id)
    assert first.kind == feedback_pb2.FEEDBACK_KIND_TEXT
    with pytest.raises(FeedbackError, match="asks for text"):
        client.respond_feedback(run.id, first.request_id, approved=True)
    with pytest.raises(FeedbackError, match="no feedback request"):
        client.respond_feedback(run.id, "talk.0.9", text="x")
    assert [r.request_id for r in pending(client, run.id)] == [first.request_id]  # refused: nothing changed
    client.respond_feedback(run.id, first.request_id, text="ada")
    # Repeating the same answer is fine; a different one is refused.
    client.respond_feedback(run.id, first.request_id, text="ada")
    with pytest.raises(FeedbackError, match="answered already"):
        client.respond_feedback(run.id, first.request_id, text="bob")
    wait_for(lambda: [r.request_id for r in pending(client, run.id)] == ["talk.0.2"], what="second question")
    (second,) = pending(client, run.id)
    assert (second.prompt, list(second.options)) == ("ada, pick a color", ["red", "blue"])
    with pytest.raises(FeedbackError, match="not one of the options"):
        client.respond_feedback(run.id, second.request_id, selected="green")
    client.respond_feedback(run.id, second.request_id, selected="blue")
    assert run.result(timeout=30) == "ada:blue"
    assert int(fx.get(f"asked:{run.id}:talk")) == 3
    assert client.get_feedback(run.id, first.request_id).response.text == "ada"


def test_a_timeout_fails_the_node_or_keeps_waiting_as_configured(client: Client, fx: redis.Redis) -> None:
    with workflow("too-late") as wf:
        ask(task_id="approve", timeout=0.5, on_timeout="fail")
    run = client.submit(wf)
    with pytest.raises(RunFailedError) as failed:
        run.result(timeout=30)
    assert (failed.value.error.node_id, failed.value.error.type) == ("approve", "FeedbackTimeout")
    with pytest.raises(FeedbackError, match="closed"):
        client.respond_feedback(run.id, "approve.0.1", approved=True)

    with workflow("patient") as wf:
        ask(task_id="approve", kind="custom", prompt="config?", timeout=0.3, on_timeout="keep_waiting")
    run = client.submit(wf)
    wait_for(
        lambda: any(b"stays open" in f.get(b"m", b"") for _, f in fx.xrange(keys.run_events(run.id))),
        what="the event recording the deadline",
    )
    assert run.status == "PAUSED" and node_state(client, run.id, "approve") == "WAITING"
    client.respond_feedback(run.id, "approve.0.1", custom_data={"replicas": 3})
    assert run.result(timeout=30)["custom"] == {"replicas": 3}


def test_a_waiting_member_keeps_the_run_running_until_the_others_finish(client: Client) -> None:
    with workflow("group-wait") as wf:
        parallel(ask(task_id="human"), ping(task_id="machine"), name="both", policy=best_effort())
    run = client.submit(wf)
    wait_pending(client, run.id)
    wait_for(lambda: node_state(client, run.id, "machine") == "SUCCEEDED", what="machine done")
    wait_for(lambda: run.status == "PAUSED", what="run PAUSED once only the human is left")
    client.respond_feedback(run.id, "human.0.1", approved=False, reason="not today")
    result = run.result(timeout=30)
    assert (result["human"]["approved"], result["machine"]) == (False, 1)


def test_a_child_runs_result_is_used_by_its_parent(client: Client, fx: redis.Redis) -> None:
    with workflow("parent") as wf:
        spawn_child(task_id="spawn", n=3)
    run = client.submit(wf)
    assert run.result(timeout=60) == 40  # (3 + 1) * 10
    info = client.get_run(run.id)
    (child_id,) = info.child_run_ids
    child = client.get_run(child_id)
    assert (child.parent.run_id, child.parent.node_id) == (run.id, "spawn")
    assert status_name(child.status) == "SUCCEEDED" and child.labels["parent_node"] == "spawn"
    assert client.run(child_id).result(timeout=5) == 4
    assert int(fx.get(f"effects:{run.id}:spawn")) == 1  # the parent's effect once, after the child


def test_a_started_child_runs_on_its_own(client: Client) -> None:
    with workflow("fire") as wf:
        fire_child(task_id="fire", n=7)
    run = client.submit(wf)
    child_id = run.result(timeout=30)
    assert client.run(child_id).result(timeout=30) == 7
    assert client.get_run(run.id).child_run_ids == [child_id]


def test_canceling_a_parent_cancels_the_child_it_waits_for(client: Client, fx: redis.Redis) -> None:
    with workflow("parent-of-long") as wf:
        spawn_waiting_child(task_id="spawn")
    run = client.submit(wf)
    wait_for(lambda: len(client.get_run(run.id).child_run_ids) == 1, what="child started")
    (child_id,) = client.get_run(run.id).child_run_ids
    wait_for(lambda: fx.get(f"running:{child_id}:long") is not None, what="child task running")
    wait_for(lambda: node_state(client, run.id, "spawn") == "WAITING", what="parent node waiting")
    (spawn,) = (n for n in client.get_run(run.id).nodes if n.node_id == "spawn")
    assert spawn.waiting_for == f"child:{child_id}"
    run.cancel("stop everything")
    with pytest.raises(RunCanceledError):
        run.result(timeout=10)
    wait_for(lambda: status_name(client.get_run(child_id).status) == "CANCELED", what="child canceled")
    wait_for(lambda: fx.get(f"observed:{child_id}:long") is not None, what="child task observed the cancel")


def test_the_cli_lists_shows_and_answers_requests(stack: LocalStack, client: Client) -> None:
    with workflow("cli-feedback") as wf:
        ask(task_id="pick", kind="multi_selection", prompt="which regions?", options=["eu", "us", "ap"])
    run = client.submit(wf)
    wait_pending(client, run.id)

    def graflow(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = cli.run(["--scheduler", stack.scheduler_address, "feedback", *argv], cli.Output(out, err))
        return code, out.getvalue(), err.getvalue()

    status_out = io.StringIO()
    assert cli.run(["--scheduler", stack.scheduler_address, "status", run.id], cli.Output(status_out)) == 0
    assert (
        f"waiting   pick for feedback pick.0.1: graflow feedback show {run.id} pick.0.1"
        in status_out.getvalue()
    )
    code, listing, _ = graflow("list", "--run", run.id)
    assert code == 0
    assert "pick.0.1" in listing and "multi_selection" in listing and "which regions?" in listing
    code, _, err = graflow("respond", run.id, "pick.0.1", "--select", "eu", "--select", "mars")
    assert code == 2 and "not among the options" in err
    code, shown, _ = graflow("respond", run.id, "pick.0.1", "--select", "eu", "--select", "ap", "--by", "bob")
    assert code == 0 and "ANSWERED" in shown and "eu, ap by bob" in shown
    assert run.result(timeout=30)["selected_multiple"] == ["eu", "ap"]
    code, _, err = graflow("respond", run.id, "pick.0.1", "--select", "us")
    assert code == 2 and "answered already by bob" in err
    code, _, err = graflow("show", run.id, "nope.0.1")
    assert code == 2 and "no feedback request 'nope.0.1'" in err


def test_async_tasks_and_loops_ask_too_each_cycle_its_own_question(client: Client) -> None:
    with workflow("async-ask") as wf:
        ask_async(task_id="say")
    run = client.submit(wf)
    (request,) = wait_pending(client, run.id)
    client.respond_feedback(run.id, request.request_id, text="hi")
    assert run.result(timeout=30) == "async:hi"

    with workflow("review") as wf:
        review_loop(task_id="loop")
    run = client.submit(wf)
    (first,) = wait_pending(client, run.id)
    assert (first.request_id, first.prompt, first.cycle) == ("loop.0.1", "note 1?", 0)
    client.respond_feedback(run.id, first.request_id, text="a")
    wait_for(lambda: [r.request_id for r in pending(client, run.id)] == ["loop.1.1"], what="cycle 1 asks")
    (second,) = pending(client, run.id)
    assert (second.prompt, second.cycle) == ("note 2?", 1)
    client.respond_feedback(run.id, second.request_id, text="b")
    assert run.result(timeout=30) == ["a", "b"]


def test_answers_of_the_wrong_kind_are_refused_and_null_and_none_are_answers(
    stack: LocalStack, client: Client
) -> None:
    with workflow("kinds") as wf:
        ask(task_id="regions", kind="multi_selection", prompt="regions?", options=["eu", "us"])
        ask(task_id="config", kind="custom", prompt="config?")
    run = client.submit(wf)
    wait_pending(client, run.id, 2)
    with pytest.raises(FeedbackError, match="the answer sets approved, which belong to other kinds"):
        client.respond_feedback(run.id, "regions.0.1", approved=False)
    graflow = ["--scheduler", stack.scheduler_address, "feedback", "respond", run.id]
    assert cli.run([*graflow, "regions.0.1", "--none"], cli.Output(io.StringIO(), io.StringIO())) == 0
    assert cli.run([*graflow, "config.0.1", "--json", "null"], cli.Output(io.StringIO(), io.StringIO())) == 0
    result = run.result(timeout=30)
    assert (result["regions"]["selected_multiple"], result["config"]["custom"]) == ([], None)
    assert client.get_feedback(run.id, "config.0.1").response.custom_json == b"null"
