"""End to end: dynamic control flow, loops, cancellation and group policies through the SDK, on
real service and worker processes."""

from __future__ import annotations

import pytest
import redis

from graflow import (
    GroupFailedError,
    RunCanceledError,
    RunFailedError,
    at_least,
    best_effort,
    critical,
    parallel,
    workflow,
)
from graflow.run import node_state_name
from tests.e2e.conftest import wait_for
from tests.e2e.tasks import (
    act,
    agent_step,
    collect,
    cooperative_wait,
    expand,
    fail_after,
    final_answer,
    give_up,
    left,
    ordered_done,
    ping,
    pong,
    publish_draft,
    refine_draft,
    right,
    source,
    spin,
    stop_here,
    think,
)


def states(client, run) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {n.node_id: node_state_name(n.state) for n in client.get_run(run.id).nodes}


def order(stack, run) -> list[str]:  # type: ignore[no-untyped-def]
    conn = redis.Redis.from_url(stack.redis_url)
    try:
        return [v.decode() for v in conn.lrange(f"order:{run.id}", 0, -1)]
    finally:
        conn.close()


def test_a_self_refining_task_iterates_with_its_data_until_its_score_is_reached(client, effects):
    with workflow("refine") as wf:
        refine_draft >> publish_draft
    run = client.submit(wf)
    assert run.result(timeout=60) == "published with score 90 after 3 drafts"
    assert effects(run.id) == {"refine_draft": 3, "publish_draft": 1}
    refine = {n.node_id: n for n in client.get_run(run.id).nodes}["refine_draft"]
    assert (refine.cycle, refine.attempt) == (2, 3)


def test_an_agent_and_a_tool_jump_to_each_other_with_goto_until_the_agent_is_done(client, effects):
    with workflow("agent") as wf:
        agent_step >> final_answer
    run = client.submit(wf)
    result = run.result(timeout=60)
    assert result == {"final": ["result of q0", "result of q1", "result of q2"]}
    counts = effects(run.id)
    assert (counts["agent_step"], counts["final_answer"]) == (4, 1)
    tools = [n for n in client.get_run(run.id).nodes if n.task_type == "use_tool"]
    assert sorted(n.node_id for n in tools) == ["agent_step.next.1", "agent_step.next.2", "agent_step.next.3"]
    assert {(n.added_by, node_state_name(n.state)) for n in tools} == {("agent_step", "SUCCEEDED")}


def test_a_static_loop_runs_until_a_task_terminates_the_run(client, effects, stack):
    with workflow("loop") as wf:
        think >> act >> think
    edges = [(e.from_id, e.to_id, e.loop) for e in wf.spec().edges]
    assert edges == [("think", "act", False), ("act", "think", True)]
    run = client.submit(wf)
    assert run.result(timeout=60) == 10  # act's last result (its sink), from think's cycle 1
    info = client.get_run(run.id)
    assert info.message == "done after 3 rounds"
    assert effects(run.id) == {"think": 3, "act": 2}
    assert order(stack, run) == ["think", "act", "think", "act", "think"]
    assert states(client, run) == {"think": "SUCCEEDED", "act": "SKIPPED"}


def test_a_loop_that_never_stops_fails_the_run_at_max_steps(client):
    with workflow("endless", max_steps=6) as wf:
        ping >> pong >> ping
    run = client.submit(wf)
    with pytest.raises(RunFailedError) as failure:
        run.result(timeout=60)
    assert failure.value.error.type == "MaxStepsExceeded"
    assert "max_steps 6" in failure.value.error.message


def test_a_dynamic_node_runs_before_the_static_successors_which_still_run(client, effects, stack):
    with workflow("expand") as wf:
        source(task_id="source", value=2) >> expand >> ordered_done
    run = client.submit(wf)
    assert run.result(timeout=60) == "done after 2"
    ran = order(stack, run)
    assert ran[0] == "expand" and ran[-1] == "ordered_done"
    assert sorted(ran[1:3]) == ["expand.next.1", "extra"]
    assert run.results(["expand.next.1", "extra"]) == {"expand.next.1": 202, "extra": 302}


def test_terminate_from_a_task_ends_the_run_successfully_and_skips_the_rest(client, effects):
    with workflow("terminate") as wf:
        source >> stop_here >> collect
    run = client.submit(wf)
    assert run.result(timeout=60) is None  # the sink was skipped
    info = client.get_run(run.id)
    assert (node_state_name(info.nodes[-1].state), info.message) == ("SKIPPED", "enough for today")
    assert run.status == "SUCCEEDED"
    assert "collect" not in effects(run.id)


def test_cancel_from_a_task_ends_the_run_canceled_with_its_message(client, effects):
    with workflow("give-up") as wf:
        source >> give_up >> collect
    run = client.submit(wf)
    with pytest.raises(RunCanceledError, match="the task gave up"):
        run.result(timeout=60)
    assert states(client, run) == {"source": "SUCCEEDED", "give_up": "SUCCEEDED", "collect": "CANCELED"}


def test_exceeding_max_cycles_fails_the_run_with_a_cycle_limit_error(client, effects):
    with workflow("spin") as wf:
        wf.add(spin)
    run = client.submit(wf)
    with pytest.raises(RunFailedError) as failure:
        run.result(timeout=60)
    error = failure.value.error
    assert (error.node_id, error.type) == ("spin", "CycleLimitExceeded")
    assert "'spin'" in error.message and "max_cycles is 2" in error.message
    assert effects(run.id) == {"spin": 3}


def test_cancel_run_reaches_a_running_cooperative_task(client, stack):
    with workflow("long") as wf:
        wf.add(cooperative_wait(task_id="work", seconds=120))
    run = client.submit(wf)
    conn = redis.Redis.from_url(stack.redis_url)
    try:
        wait_for(lambda: conn.exists(f"running:{run.id}:work"), 30, "the task to start")
        info = run.cancel("the user stopped it")
        assert node_state_name(info.nodes[0].state) == "CANCELED"
        assert run.status == "CANCELED"
        wait_for(lambda: conn.exists(f"observed:{run.id}:work"), 30, "the task to observe the cancel")
    finally:
        conn.close()
    with pytest.raises(RunCanceledError, match="the user stopped it"):
        run.result(timeout=10)


def failing_group(policy):  # type: ignore[no-untyped-def]
    """source >> (left | right | bad) >> collect, where bad fails after left and right succeeded."""
    with workflow("group-policy") as wf:
        bad = fail_after(task_id="bad", others=["left", "right"], message="member broke")
        source >> parallel(left, right, bad, name="members", policy=policy) >> collect
    return wf


def test_a_strict_group_with_a_failing_member_raises_a_group_error_with_both_lists(client):
    run = client.submit(failing_group(None))
    with pytest.raises(GroupFailedError) as failure:
        run.result(timeout=60)
    error = failure.value
    assert error.error.node_id == "members"
    assert [(f.node_id, f.type, f.message) for f in error.failed] == [("bad", "ValueError", "member broke")]
    assert sorted(error.succeeded) == ["left", "right"]


@pytest.mark.parametrize("policy", [best_effort(), at_least(2), critical(left, right)])
def test_lenient_group_policies_go_on_without_the_failing_member(client, policy):
    run = client.submit(failing_group(policy))
    assert run.result(timeout=60) == {"count": 2, "total": 11 + 101}
    assert states(client, run)["bad"] == "FAILED"


@pytest.mark.parametrize("policy", [at_least(3), critical(fail_after(task_id="bad", others=[]))])
def test_demanding_group_policies_fail_with_the_failing_member(client, policy):
    run = client.submit(failing_group(policy))
    with pytest.raises(GroupFailedError) as failure:
        run.result(timeout=60)
    assert [f.node_id for f in failure.value.failed] == ["bad"]
    assert sorted(failure.value.succeeded) == ["left", "right"]
