"""The role table: its decisions that the issue fixes, and docs/security.md showing it as it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from graflow_api.v1 import coordinator_pb2, result_store_pb2, scheduler_pb2
from graflow_runtime.access import AUDITED, METHOD_ROLES, Role, role_table

SECURITY_DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
TABLE_START = "<!-- roles table: role_table() of graflow_runtime/access.py; access_test.py checks it -->"
TABLE_END = "<!-- end of the roles table -->"
SERVICES = [
    module.DESCRIPTOR.services_by_name[name]
    for module, name in (
        (scheduler_pb2, "Scheduler"),
        (coordinator_pb2, "Coordinator"),
        (result_store_pb2, "ResultStore"),
    )
]
METHODS = {f"/{s.full_name}/{m.name}": m for s in SERVICES for m in s.methods}
READS = ("Get", "List", "Watch", "Count", "WaitRun", "ChannelGet", "ChannelKeys")


@pytest.mark.parametrize(
    ("role", "method"),
    [
        (Role.CLIENT, "Coordinator/Dispatch"),
        (Role.CLIENT, "Coordinator/RegisterWorker"),
        (Role.CLIENT, "ResultStore/PutResults"),
        (Role.CLIENT, "Coordinator/NotifyCanceled"),
        (Role.WORKER, "Scheduler/CancelRun"),
        (Role.WORKER, "Coordinator/ReplayDeadLetters"),
        (Role.VIEWER, "Scheduler/SubmitRun"),
        (Role.SERVICE, "Scheduler/CancelRun"),
    ],
)
def test_what_the_issue_says_must_be_refused_is_refused(role: Role, method: str) -> None:
    assert role not in METHOD_ROLES[f"/graflow_api.v1.{method}"]


def test_admin_may_call_everything_and_viewer_only_reads() -> None:
    assert set(METHOD_ROLES) == set(METHODS)
    for method, roles in METHOD_ROLES.items():
        assert Role.ADMIN in roles, method
        name = method.rsplit("/", 1)[1]
        assert (Role.VIEWER in roles) == name.startswith(READS), method


def test_audited_methods_are_unary_methods_with_the_fields_they_name() -> None:
    for method, fields in AUDITED.items():
        descriptor = METHODS[method]
        assert not descriptor.client_streaming and not descriptor.server_streaming, method
        for path in fields:
            message = descriptor.input_type
            for part in path.split("."):
                field = message.fields_by_name[part]
                message = field.message_type
            assert message is None or field.label == field.LABEL_REPEATED, (method, path)


def test_the_table_in_docs_security_md_is_the_one_in_the_code() -> None:
    text = SECURITY_DOC.read_text()
    assert TABLE_START in text and TABLE_END in text, f"{SECURITY_DOC} lost the markers of its roles table"
    documented = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()
    assert documented == role_table(), "regenerate the roles table of docs/security.md with role_table()"
