"""Who may call what: the roles each RPC accepts, in one table.

A credential carries one role (:class:`Role`); a server admits a call when the caller's role is in
the method's rule (``METHOD_ROLES``) and refuses it with PERMISSION_DENIED otherwise
(:mod:`graflow_runtime.auth` enforces it). A method without a rule is refused to everybody, and the
auth matrix test (``tests/e2e/auth_matrix_test.py``) fails for it, so a new RPC cannot ship
without a decision. ``docs/security.md`` shows this table; a test checks that they agree.

The rules follow who really calls what (grep the callers before changing one):
- the SDK ``Client`` and the CLI's run commands (``client``): the scheduler's client API, and
  from the result-store results, graphs and channel reads;
- workers (``worker``): their membership at the coordinator, results, channels and checkpoints at
  the result-store, and child runs at the scheduler (``SubmitRun``, ``GetRun``, ``WaitRun``);
  a task's feedback request travels in its outcome, not through an RPC;
- services calling services (``service``): the scheduler stores and reads graphs and keeps runs'
  results alive at the result-store; ``Dispatch`` and ``NotifyCanceled`` are for services (the
  scheduler dispatches in its own process today);
- ``viewer``: every read (Get*, List*, Watch*, ``WaitRun``, channel reads), nothing that changes;
- the console (issue 11) holds no credential of its own: it calls with the signed-in person's,
  so its pages need exactly these rules. Registering and deleting workflows (``PutWorkflow``,
  ``DeleteWorkflow``) is an application's act like submitting (``client``), audited because it
  changes what every later submit by name runs; deleting dead letters loses work for good, so it
  is ``admin`` only (replay is too); queue statistics are an operator's read (``viewer``);
- ``admin``: everything, the operators' calls (dead letters, audit) included.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class Role(StrEnum):
    CLIENT = "client"
    WORKER = "worker"
    SERVICE = "service"
    ADMIN = "admin"
    VIEWER = "viewer"


def _rule(*roles: Role) -> frozenset[Role]:
    """``roles`` and ``admin``, which may call everything."""
    return frozenset((Role.ADMIN, *roles))


C, W, S, V = Role.CLIENT, Role.WORKER, Role.SERVICE, Role.VIEWER
_SCHEDULER = "/graflow_api.v1.Scheduler/"
_COORDINATOR = "/graflow_api.v1.Coordinator/"
_RESULT_STORE = "/graflow_api.v1.ResultStore/"

METHOD_ROLES: Mapping[str, frozenset[Role]] = {
    _SCHEDULER + "SubmitRun": _rule(C, W),
    _SCHEDULER + "WaitRun": _rule(C, W, V),
    _SCHEDULER + "GetRun": _rule(C, W, V),
    _SCHEDULER + "ListRuns": _rule(C, V),
    _SCHEDULER + "WatchRun": _rule(C, V),
    _SCHEDULER + "CancelRun": _rule(C),
    _SCHEDULER + "ListFeedback": _rule(C, V),
    _SCHEDULER + "GetFeedback": _rule(C, V),
    _SCHEDULER + "RespondFeedback": _rule(C),
    _SCHEDULER + "CountRuns": _rule(C, V),
    _SCHEDULER + "PutWorkflow": _rule(C),
    _SCHEDULER + "GetWorkflow": _rule(C, V),
    _SCHEDULER + "ListWorkflows": _rule(C, V),
    _SCHEDULER + "DeleteWorkflow": _rule(C),
    _COORDINATOR + "Dispatch": _rule(S),
    _COORDINATOR + "RegisterWorker": _rule(W),
    _COORDINATOR + "Heartbeat": _rule(W),
    _COORDINATOR + "HeartbeatStream": _rule(W),
    _COORDINATOR + "DeregisterWorker": _rule(W),
    _COORDINATOR + "ListWorkers": _rule(V),
    _COORDINATOR + "ListDeadLetters": _rule(V),
    _COORDINATOR + "ReplayDeadLetters": _rule(),
    _COORDINATOR + "DeleteDeadLetters": _rule(),
    _COORDINATOR + "ListQueues": _rule(V),
    _COORDINATOR + "NotifyCanceled": _rule(S),
    _COORDINATOR + "ListAuditEvents": _rule(V),
    _RESULT_STORE + "PutResults": _rule(W),
    _RESULT_STORE + "GetResults": _rule(C, W, V),
    _RESULT_STORE + "PutGraph": _rule(S),
    _RESULT_STORE + "GetGraph": _rule(C, S, V),
    _RESULT_STORE + "ChannelGet": _rule(C, W, V),
    _RESULT_STORE + "ChannelSet": _rule(W),
    _RESULT_STORE + "ChannelDelete": _rule(W),
    _RESULT_STORE + "ChannelKeys": _rule(C, W, V),
    _RESULT_STORE + "ChannelUpdate": _rule(W),
    _RESULT_STORE + "PutCheckpoint": _rule(W),
    _RESULT_STORE + "GetCheckpoint": _rule(W, V),
    _RESULT_STORE + "KeepRunsAlive": _rule(S),
}

# The mutating actions written to the audit log (graflow_runtime.audit), with the fields of the
# request (dotted paths) that say what was acted on. Frequent writes are not audited: results,
# channels, dispatches and heartbeats (services and workers), and submits (up to 1,000 runs/s:
# they would push the rare actions people take out of the capped stream within minutes, and add a
# Redis round trip to SubmitRun's 1 ms budget of issue 13).
AUDITED: Mapping[str, tuple[str, ...]] = {
    _SCHEDULER + "CancelRun": ("run_id", "reason"),
    _SCHEDULER + "RespondFeedback": ("run_id", "request_id"),
    _SCHEDULER + "PutWorkflow": ("name",),
    _SCHEDULER + "DeleteWorkflow": ("name",),
    _COORDINATOR + "RegisterWorker": ("worker_id", "queues", "hostname", "pid"),
    _COORDINATOR + "DeregisterWorker": ("worker_id",),
    _COORDINATOR + "ReplayDeadLetters": ("ids", "all"),
    _COORDINATOR + "DeleteDeadLetters": ("ids",),
}


def role_table() -> str:
    """``METHOD_ROLES`` (and ``AUDITED``) as the Markdown table of docs/security.md, which a test
    checks against this. Regenerate it with
    ``python -c 'from graflow_runtime.access import role_table; print(role_table())'``."""
    columns = (Role.CLIENT, Role.WORKER, Role.SERVICE, Role.VIEWER, Role.ADMIN)
    lines = [
        "| RPC | " + " | ".join(role.value for role in columns) + " | audited |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for method, roles in METHOD_ROLES.items():
        marks = " | ".join("✓" if role in roles else "" for role in columns)
        audited = "✓" if method in AUDITED else ""
        lines.append(f"| `{method.removeprefix('/graflow_api.v1.')}` | {marks} | {audited} |")
    return "\n".join(lines)
