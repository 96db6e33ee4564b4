"""The whole stack with tracing on (every service and worker exporting spans to its log): the
tracing interceptors wrap every call, streams included (the workers' heartbeat stream, WaitRun,
WatchRun), and a workflow still runs end to end. Found by the bench's hops pass: with tracing on,
a handler that wrote its stream with ``context.write`` failed every call under the tracing
interceptor, so no worker ever started reading its queues."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from graflow import workflow
from graflow.devstack import LocalStack
from tests.e2e.conftest import module_stack, wait_for
from tests.e2e.tasks import join, left, right, source

TRACED = {f"GRAFLOW_{role}_TRACES_EXPORTER": "console"
          for role in ("SCHEDULER", "COORDINATOR", "RESULT_STORE", "WORKER")}


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    with module_stack(request, env=TRACED) as stack:
        yield stack


def test_a_workflow_runs_end_to_end_with_every_process_tracing(client, stack: LocalStack) -> None:
    with workflow("traced") as wf:
        source(task_id="source", value=2) >> (left | right) >> join
    assert client.submit(wf).result(timeout=30) == {"left": 12, "right": 102, "sum": 114}
    # Spans are exported by the services and the workers alike (in batches, every few seconds).
    for names in (["scheduler"], ["coordinator"], ["result-store"], ["worker-0", "worker-1"]):
        wait_for(lambda names=names: any('"trace_id"' in stack.log_path(n).read_text() for n in names),
                 30, f"a span in the log of {' or '.join(names)}")
