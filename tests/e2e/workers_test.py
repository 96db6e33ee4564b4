"""End to end: how work is shared between workers and survives the scheduler process."""

from __future__ import annotations

import signal

from graflow import parallel, workflow
from tests.e2e.conftest import start_stack, wait_for
from tests.e2e.tasks import collect, item, slow, source


def test_two_workers_share_a_queue_and_no_task_runs_twice(client, effects, stack):
    assert len([w for w in stack.workers if w is not None]) >= 2
    with workflow("shared") as wf:
        source >> parallel(*[item(task_id=f"i{i}", i=i) for i in range(300)]) >> collect
    run = client.submit(wf)
    assert run.result(timeout=60)["count"] == 300
    counts = effects(run.id)
    assert len(counts) == 302
    assert max(counts.values()) == 1


def test_a_worker_started_after_submission_picks_the_work_up():
    stack, server = start_stack(workers=0)
    try:
        with stack.client() as client:
            with workflow("late") as wf:
                source(task_id="s", value=41)
            run = client.submit(wf)
            assert run.status == "RUNNING"
            stack.start_worker()
            assert run.result(timeout=30) == 41
    finally:
        stack.stop()
        server.close()


def test_run_state_lives_in_redis_and_survives_a_scheduler_restart(client, effects, stack):
    with workflow("restart") as wf:
        source >> slow(task_id="s1", seconds=1.0) >> slow(task_id="s2", seconds=0.2)
    run = client.submit(wf)
    wait_for(lambda: "s1" in effects(run.id), what="s1 to start")
    stack.restart("scheduler", sig=signal.SIGKILL)
    assert run.result(timeout=60) == 0.2
    assert effects(run.id) == {"source": 1, "s1": 1, "s2": 1}
