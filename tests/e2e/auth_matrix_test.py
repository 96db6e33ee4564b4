"""Who may call what, end to end (issue 14, sections 2 and 5).

The auth matrix: every RPC of every service of the ``graflow_api.v1`` contracts (found in their
descriptors, so a new RPC or service is in the matrix without anybody adding it here) is called on
a real stack whose servers accept one token per role, with no credential, a wrong one, garbage
bytes as its body without a credential, and each role's token. Each call must end exactly as
``graflow_runtime.access.METHOD_ROLES`` says: UNAUTHENTICATED without a valid credential,
PERMISSION_DENIED for a role outside the method's rule, and anything else ("admitted": the empty
body may well be INVALID_ARGUMENT or NOT_FOUND) for a role inside it. A method without a rule fails.

Beside it, on the same stack: a run with channels and a child run completes with each process
sending its role's token, and mutating actions are in the audit log, listed by ``graflow audit``.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from graflow import Client, parallel, workflow
from graflow.cli.testing.capture import Captured
from graflow.devstack import LocalStack
from graflow.errors import ServiceCallError
from graflow.operators import AuditEvent, Operators
from graflow_api.v1 import scheduler_pb2
from graflow_runtime.access import METHOD_ROLES, Role
from graflow_runtime.auth import token_digest
from tests.e2e.conftest import module_stack, wait_for
from tests.e2e.tasks import (
    add_one,
    chan_params,
    chan_reader,
    chan_writer,
    cooperative_wait,
    source,
    spawn_child,
)

# The process of the stack that serves each service of the contracts.
SERVERS = {
    "graflow_api.v1.Scheduler": "scheduler",
    "graflow_api.v1.Coordinator": "coordinator",
    "graflow_api.v1.ResultStore": "result-store",
}
GARBAGE = b"\xff\xfe\xfd not a protobuf message \x00\x01"
WRONG_TOKEN = "not-a-token-of-this-stack"
CALL_TIMEOUT_S = 30.0


def contract_services() -> list[ServiceDescriptor]:
    """Every service declared in the graflow_api.v1 package (its generated modules, all of them)."""
    package = importlib.import_module(scheduler_pb2.__package__ or "graflow_api.v1")
    services = []
    for module_info in pkgutil.iter_modules(package.__path__):
        if module_info.name.endswith("_pb2"):
            module = importlib.import_module(f"{package.__name__}.{module_info.name}")
            services.extend(module.DESCRIPTOR.services_by_name.values())
    return sorted(services, key=lambda s: s.full_name)


METHODS: list[tuple[ServiceDescriptor, MethodDescriptor]] = [
    (service, method) for service in contract_services() for method in service.methods
]


def full_name(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    with module_stack(request, workers=1, role_tokens=True) as stack:
        yield stack


def call(channel: grpc.Channel, method: MethodDescriptor, body: bytes, token: str | None) -> grpc.StatusCode:
    """Call ``method`` with raw ``body`` bytes (identity serializers: nothing is encoded or decoded
    here); its status code, OK when the first response (or the end of the stream) came."""
    name = full_name(method)
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    kwargs = {"metadata": metadata, "timeout": CALL_TIMEOUT_S}
    try:
        if not method.client_streaming and not method.server_streaming:
            channel.unary_unary(name)(body, **kwargs)
        elif not method.client_streaming:
            first_response(channel.unary_stream(name)(body, **kwargs))
        elif not method.server_streaming:
            channel.stream_unary(name)(iter([body]), **kwargs)
        else:
            first_response(channel.stream_stream(name)(iter([body]), **kwargs))
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def first_response(responses: grpc.Call) -> None:
    try:
        next(responses)  # type: ignore[call-overload]
    except StopIteration:
        pass
    finally:
        responses.cancel()


def outcome(code: grpc.StatusCode) -> str:
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return code.name
    return "admitted"


def test_the_contracts_have_the_services_the_matrix_calls() -> None:
    assert {service.full_name for service, _ in METHODS} == set(SERVERS)
    assert len(METHODS) >= 30


def test_every_rule_names_a_method_of_the_contracts() -> None:
    assert set(METHOD_ROLES) - {full_name(method) for _, method in METHODS} == set()


@pytest.mark.parametrize(
    ("service", "method"), METHODS, ids=[f"{s.name}.{m.name}" for s, m in METHODS]
)
def test_each_credential_gets_what_the_table_says(
    stack: LocalStack, service: ServiceDescriptor, method: MethodDescriptor
) -> None:
    name = full_name(method)
    assert name in METHOD_ROLES, (
        f"{name} has no rule in graflow_runtime.access.METHOD_ROLES: decide which roles may call it "
        "(and add it to the table in docs/security.md)"
    )
    allowed = METHOD_ROLES[name]
    with grpc.insecure_channel(stack.address(SERVERS[service.full_name])) as channel:
        got = {
            "no credential": outcome(call(channel, method, b"", None)),
            "wrong token": outcome(call(channel, method, b"", WRONG_TOKEN)),
            "garbage, no credential": outcome(call(channel, method, GARBAGE, None)),
            "garbage, wrong token": outcome(call(channel, method, GARBAGE, WRONG_TOKEN)),
        }
        for role in Role:
            got[role.value] = outcome(call(channel, method, b"", stack.token_of(role)))
    expected = {
        "no credential": "UNAUTHENTICATED",
        "wrong token": "UNAUTHENTICATED",
        "garbage, no credential": "UNAUTHENTICATED",
        "garbage, wrong token": "UNAUTHENTICATED",
        **{role.value: "admitted" if role in allowed else "PERMISSION_DENIED" for role in Role},
    }
    assert got == expected


def test_garbage_from_an_admitted_role_is_invalid_argument_not_unknown(stack: LocalStack) -> None:
    [(_, cancel)] = [(s, m) for s, m in METHODS if m.name == "CancelRun"]
    with grpc.insecure_channel(stack.scheduler_address) as channel:
        code = call(channel, cancel, GARBAGE, stack.token_of(Role.CLIENT))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_run_with_channels_and_a_child_run_completes_with_a_token_per_role(client: Client) -> None:
    with workflow("roles-channels") as wf:
        parallel(chan_writer, chan_reader) >> chan_params >> spawn_child(task_id="child", n=4)
    run = client.submit(wf)
    assert run.result(timeout=120) == 50
    assert run.channel().get("greeting") == "hello from the writer"


def test_mutating_actions_are_audited_with_their_role_and_listed_by_graflow_audit(
    stack: LocalStack, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = client.submit(workflow_of_one_gated_task())
    run.cancel()
    client_principal = f"token:{token_digest(stack.token_of(Role.CLIENT))[:12]}"
    worker_principal = f"token:{token_digest(stack.token_of(Role.WORKER))[:12]}"
    with Operators(stack.coordinator_address, auth_token=stack.token_of(Role.ADMIN)) as ops:

        def cancels() -> list[AuditEvent]:
            return [
                e
                for e in ops.audit_events(limit=1000)
                if e.method.endswith("/CancelRun") and json.loads(e.details_json).get("run_id") == run.id
            ]

        wait_for(lambda: bool(cancels()), timeout_s=30, what="the cancel in the audit log")
        [cancel] = cancels()
        events = ops.audit_events(limit=1000)
    actions = {(e.service, e.method.rsplit("/", 1)[1], e.role, e.principal, e.outcome) for e in events}
    assert ("scheduler", "CancelRun", "client", client_principal, "OK") in actions
    assert ("coordinator", "RegisterWorker", "worker", worker_principal, "OK") in actions
    assert not [action for action in actions if action[1] == "SubmitRun"]  # too frequent: not audited
    assert json.loads(cancel.details_json) == {"run_id": run.id, "reason": ""}
    assert cancel.peer.startswith("ipv4:127.0.0.1:") and cancel.at_ms > 0

    for name, value in stack.client_env().items():  # the operator's admin token
        monkeypatch.setenv(name, value)
    cli = Captured()
    assert cli("audit", "--limit", "1000", "-o", "json") == 0, cli.err
    listed = json.loads(cli.out)
    expected = {"method": cancel.method, "role": "client", "details": {"run_id": run.id, "reason": ""}}
    assert expected.items() <= next(e for e in listed if e["id"] == cancel.id).items()
    table = Captured()
    assert table("audit", "--limit", "5") == 0, table.err
    lines = table.out.splitlines()
    assert lines[0].split() == ["ID", "AT", "SERVICE", "METHOD", "ROLE", "WHO", "FROM", "OUTCOME", "DETAILS"]
    assert len(lines) == 1 + min(5, len(listed))


def test_a_worker_token_cannot_cancel_a_run_and_the_attempt_is_audited(stack: LocalStack) -> None:
    worker = stack.token_of(Role.WORKER)
    with Operators(stack.coordinator_address, auth_token=stack.token_of(Role.VIEWER)) as ops:
        before = {e.id for e in ops.audit_events(limit=1000)}
        with Client(stack.scheduler_address, stack.result_store_address, auth_token=worker) as as_worker:
            denied = "PERMISSION_DENIED: role worker may not call"
            with pytest.raises(ServiceCallError, match=denied) as caught:
                as_worker.cancel("01HZZZZZZZZZZZZZZZZZZZZZZZ")
        events = [e for e in ops.audit_events(limit=1000) if e.id not in before]
    assert "/graflow_api.v1.Scheduler/CancelRun" in str(caught.value)
    assert "docs/security.md lists who may call what" in str(caught.value)
    refused = [e for e in events if e.method.endswith("/CancelRun") and e.role == "worker"]
    assert [e.outcome for e in refused] == ["PERMISSION_DENIED"]
    assert json.loads(refused[0].details_json) == {}  # the refused body was never parsed


def workflow_of_one_gated_task():  # type: ignore[no-untyped-def]
    with workflow("roles-cancel") as wf:
        cooperative_wait(task_id="wait", seconds=60)
    return wf


def test_one_shared_legacy_token_still_runs_everything_and_refuses_calls_without_it(
    request: pytest.FixtureRequest,
) -> None:
    with module_stack(request, workers=1, auth_token="one-shared-token") as shared:
        with shared.client(timeout=30) as client:
            with workflow("legacy-token") as wf:
                source(task_id="s", value=2) >> add_one(task_id="a")
            assert client.submit(wf).result(timeout=60) == 3
        with Operators(shared.coordinator_address, auth_token="one-shared-token") as ops:
            assert [w.worker_id for w in ops.workers()] == ["dev-worker-0"]  # admin: operators' calls too
        [(_, list_runs)] = [(s, m) for s, m in METHODS if m.name == "ListRuns"]
        with grpc.insecure_channel(shared.scheduler_address) as channel:
            assert call(channel, list_runs, b"", None) == grpc.StatusCode.UNAUTHENTICATED
            assert call(channel, list_runs, b"", "one-shared-token") == grpc.StatusCode.OK
