"""The stack started from the PEXes that ``./pants package ::`` writes, each service as
``python3.11 <svc>.pex`` the way its container runs it: outside any virtualenv, with no repository
on its path (no PYTHONPATH, working directory outside the sandbox). A workflow completes and every
process answers its health check."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from graflow.devstack import SERVERS, LocalStack, LocalStackError
from graflow_examples import etl

# Where Pants puts the packages of the test target's runtime_package_dependencies (tests/e2e/BUILD),
# as `./pants package` does under dist/.
PEXES = {
    "scheduler": Path("services.scheduler/scheduler.pex"),
    "coordinator": Path("services.coordinator/coordinator.pex"),
    "result-store": Path("services.result-store/result-store.pex"),
    "worker": Path("services.worker/worker.pex"),
}


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    python = shutil.which("python3.11")
    assert python, "python3.11 is not on PATH"
    commands = {service: [python, str(pex.resolve())] for service, pex in PEXES.items()}
    with LocalStack(workers=1, task_modules=["graflow_examples.etl"], commands=commands) as started:
        yield started


def test_services_run_from_their_pexes_outside_the_repository(stack: LocalStack) -> None:
    for process in [*stack.servers.values(), *stack.workers]:
        assert process.argv[1].endswith(".pex"), process.argv
        assert "PYTHONPATH" not in process.env and "VIRTUAL_ENV" not in process.env
        assert process.cwd == stack.log_dir


def test_a_workflow_completes(stack: LocalStack) -> None:
    run = stack.client().submit(etl.etl)
    assert run.result(timeout=120) == etl.EXPECTED_REPORT


def test_every_process_answers_its_health_check(stack: LocalStack) -> None:
    processes = [*(stack.servers[name] for name in SERVERS), stack.workers[0]]
    for process in processes:
        with grpc.insecure_channel(process.health_address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, process.name


def test_the_repository_is_not_on_a_services_path(stack: LocalStack) -> None:
    """This test's own modules import here, but not in a worker run from its PEX."""
    with pytest.raises(LocalStackError, match="No module named 'tests'"):
        stack.start_worker(env={"GRAFLOW_WORKER_TASK_MODULES": "tests.e2e.tasks"})
