"""Canceled runs listed in heartbeat responses reach the worker's running tasks and stop its
deliveries of those runs that did not start (real Redis, coordinator and result-store doubles)."""

from __future__ import annotations

import json

from graflow_api.v1 import messages_pb2

from graflow_worker.testing_services_test_support import enqueue, envelope, eventually, wait_outcomes
from graflow_worker.testing_tasks_test_support import PROBE


async def test_a_running_task_sees_its_run_canceled_and_later_deliveries_are_not_run(stack):
    await stack.start_worker()
    await enqueue(stack.redis, envelope("run-c", "waiter", "wait_for_cancel", args={"timeout_s": 20}))
    await eventually(lambda: "wait_for_cancel:run-c" in PROBE.started, what="the task to start")
    stack.coordinator.canceled_run_ids = ["run-c"]
    (first,) = await wait_outcomes(stack.redis, 1)
    assert first.status == messages_pb2.TaskOutcome.STATUS_SUCCEEDED
    assert json.loads(stack.store.results[("run-c", "waiter")].value.data) == "saw the cancel"
    await enqueue(stack.redis, envelope("run-c", "later", "add", args={"a": 1}))
    _, second = await wait_outcomes(stack.redis, 2)
    assert (second.node_id, second.error.type) == ("later", "RunCanceled")
