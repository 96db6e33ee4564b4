"""End to end over a closed Redis (issue 14): redis-server serves TLS only and has the services' ACL
users loaded; every process connects as its own service's user. A workflow with a retry, channel
updates, a child run and a question answered by a person completes; a canceled run reaches its
running task and its child run; a task that kills its workers is reclaimed and dead-lettered; an
undecodable delivery is dead-lettered and replayed; Redis restarts; and Redis refused nothing on
the way (its ACL LOG stays empty, background loops included: trimming, liveness, sweeps, the
feedback notifier's reads, claims and acknowledgements): the
ACLs are sufficient (graflow_runtime/redis_acl_test.py proves them tight)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from graflow import Client, parallel, workflow
from graflow.devstack import LocalStack
from graflow.errors import GraflowError, RunCanceledError, RunFailedError
from graflow.operators import Operators
from graflow.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from graflow_runtime import keys, redis_acl
from graflow_runtime.local_redis import LocalRedis, RedisTls
from graflow_runtime.signing import BusKeys, Kind
from graflow_runtime.testing.receiver import Receiver, receiving_in_thread
from tests.e2e.conftest import module_stack, wait_for
from tests.e2e.delivery_test import FAST_LEASE
from tests.e2e.tasks import (
    ask,
    chan_count,
    cooperative_wait,
    crash_worker,
    flaky,
    source,
    spawn_child,
    spawn_waiting_child,
)

# Which user runs each service's Lua scripts (the shared ones of graflow_runtime: the scheduler and
# the coordinator).
SCRIPT_USERS = {
    "services/scheduler": [redis_acl.SCHEDULER],
    "services/coordinator": [redis_acl.COORDINATOR],
    "services/result-store": [redis_acl.RESULT_STORE],
    "services/worker": [redis_acl.WORKER],
    "libs/graflow_runtime/dispatch.lua": [redis_acl.SCHEDULER, redis_acl.COORDINATOR],
    "libs/graflow_runtime/register_queues.lua": [redis_acl.SCHEDULER, redis_acl.COORDINATOR],
}
_CALL = re.compile(r"""(?:redis\.p?call\(|pcall\(\s*redis\.call\s*,)\s*'(\w+)'(?:\s*,\s*'([A-Z]+)')?""")
_WITH_SUBCOMMAND = {"xgroup", "xinfo", "client", "script", "config", "object"}


@pytest.fixture(scope="module")
def effects_redis() -> Iterator[LocalRedis]:
    """Where the test tasks record their effects: a Redis of their own (task code is no service)."""
    with LocalRedis() as server:
        yield server


WEBHOOK_SECRET = "closed-redis-webhook"


@pytest.fixture(scope="module")
def webhook() -> Iterator[Receiver]:
    """The scheduler's feedback webhook (docs/operations.md, "Feedback notifications")."""
    with receiving_in_thread() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, redis_tls: RedisTls, effects_redis: LocalRedis, webhook: Receiver
) -> Iterator[LocalStack]:
    server = LocalRedis(tls=redis_tls, users=redis_acl.generate_passwords()).start()
    # Short leases and intervals: reclaims, trimming, the scheduler's recovery sweep, its keep-alive
    # of live runs' results (through the result-store) and its claims of idle outcomes run within
    # the tests, so the empty ACL LOG covers them.
    env = {
        **FAST_LEASE,
        "GRAFLOW_SCHEDULER_SWEEP_INTERVAL_S": "0.5",
        "GRAFLOW_SCHEDULER_RESULTS_KEEPALIVE_S": "0.5",
        "GRAFLOW_SCHEDULER_CLAIM_IDLE_MS": "1000",
        "GRAFLOW_TEST_EFFECTS_URL": effects_redis.url,
        "GRAFLOW_SCHEDULER_FEEDBACK_WEBHOOK_URL": webhook.url,
        "GRAFLOW_SCHEDULER_FEEDBACK_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    with module_stack(request, workers=4, server=server, env=env) as stack:
        yield stack


@pytest.fixture
def admin(stack: LocalStack) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(stack.redis_url)  # the operators' user
    yield conn
    conn.close()


def test_every_process_connects_over_tls_as_its_own_service_user(
    stack: LocalStack, admin: redis.Redis
) -> None:
    for service in ("scheduler", "coordinator", "result-store", "worker"):
        url = stack.redis_url_for(service)
        assert url.startswith(f"rediss://{service}:"), service
    users = {client["user"] for client in admin.client_list()}
    assert users == {"scheduler", "coordinator", "result-store", "worker", "default"}
    for name in ("scheduler", "coordinator", "result-store", "worker-0"):
        log = stack.log_path(name).read_text()
        assert "could not check Redis durability" not in log, name  # checked through INFO


def test_a_workflow_with_a_retry_channels_a_child_run_and_a_wait_completes_and_redis_refused_nothing(
    client: Client, admin: redis.Redis, webhook: Receiver
) -> None:
    admin.acl_log_reset()
    with workflow("closed-redis") as wf:
        source(task_id="src", value=2) >> parallel(
            flaky(task_id="retried", fail_times=1),
            chan_count(task_id="counter", i=3, times=2),
            spawn_child(task_id="parent", n=4),
            ask(task_id="approve", prompt="ship it?"),
        )
    run = client.submit(wf)
    try:
        wait_for(lambda: len(client.list_feedback(run.id)) == 1, timeout_s=60, what="the question")
        (request,) = client.list_feedback(run.id)
        # The question was notified (signed) before it is answered (an answered one is not sent).
        wait_for(lambda: len(webhook.received) == 1, timeout_s=30, what="the webhook's notification")
        (notified,) = webhook.received
        assert verify_signature(
            WEBHOOK_SECRET, notified.headers[TIMESTAMP_HEADER.lower()], notified.body,
            notified.headers[SIGNATURE_HEADER.lower()],
        )
        assert json.loads(notified.body)["graflow"]["request_id"] == request.request_id
        client.respond_feedback(run.id, request.request_id, approved=True, responded_by="alice")
        run.result(timeout=120)
    except (TimeoutError, GraflowError, AssertionError) as exc:  # a refusal fails a task or stalls the run
        raise AssertionError(f"{exc}; Redis refused: {admin.acl_log()}") from exc
    results = run.results(["retried", "counter", "parent", "approve"])
    # retried: its attempt 2 succeeded; parent: the child's (4 + 1) * 10
    assert (results["retried"], results["counter"], results["parent"]) == (2, 3, 50)
    assert (results["approve"]["approved"], results["approve"]["by"]) == (True, "alice")
    assert run.channel().get("total") == 6
    assert admin.acl_log() == []  # no command of any service was refused, in any path it took


def test_a_canceled_run_reaches_its_running_task_and_its_child_run(
    client: Client, admin: redis.Redis, effects_redis: LocalRedis
) -> None:
    admin.acl_log_reset()
    with workflow("closed-redis-cancel") as wf:
        parallel(cooperative_wait(task_id="work", seconds=120), spawn_waiting_child(task_id="parent"))
    run = client.submit(wf)
    fx = redis.Redis.from_url(effects_redis.url)
    try:
        wait_for(lambda: bool(client.get_run(run.id).child_run_ids), 60, "the child run")
        (child,) = client.get_run(run.id).child_run_ids
        for run_id, node in ((run.id, "work"), (child, "long")):
            wait_for(lambda r=run_id, n=node: fx.exists(f"running:{r}:{n}"), 60, f"{node} to start")
        run.cancel("stopped by the test")
        for run_id, node in ((run.id, "work"), (child, "long")):  # the child is canceled with its parent
            wait_for(lambda r=run_id, n=node: fx.exists(f"observed:{r}:{n}"), 60, f"{node} to see the cancel")
    finally:
        fx.close()
    with pytest.raises(RunCanceledError, match="stopped by the test"):
        run.result(timeout=30)
    assert admin.acl_log() == []


def test_a_task_that_kills_its_workers_is_reclaimed_and_dead_lettered(
    stack: LocalStack, client: Client, admin: redis.Redis
) -> None:
    admin.acl_log_reset()
    with workflow("closed-redis-poison") as wf:
        crash_worker(task_id="p")
    run = client.submit(wf)
    with pytest.raises(RunFailedError) as failed:
        run.result(timeout=90)
    assert failed.value.error.type == "PoisonMessage", admin.acl_log()
    with Operators(stack.coordinator_address) as ops:
        letters = [letter for letter in ops.dead_letters() if letter.run_id == run.id]
    assert [(letter.node_id, letter.attempt) for letter in letters] == [("p", 3)]
    assert admin.acl_log() == []


def test_an_undecodable_delivery_is_dead_lettered_by_a_worker_and_replayed_by_the_coordinator(
    stack: LocalStack, admin: redis.Redis
) -> None:
    admin.acl_log_reset()
    # Signed when the stack signs (GRAFLOW_TEST_SIGNING=1), so that only its decoding fails.
    bus = BusKeys.from_settings([stack.signing_key], "") if stack.signing_key else BusKeys()
    raw = b"not an envelope"
    signature = bus.sign_fields(Kind.ENVELOPE, raw)
    admin.xadd(keys.queue_stream("default"), {keys.ENVELOPE_FIELD: raw, **signature})

    def undecodable(ops: Operators) -> list[str]:
        return [letter.id for letter in ops.dead_letters(limit=0) if letter.raw == b"not an envelope"]

    with Operators(stack.coordinator_address) as ops:
        wait_for(lambda: len(undecodable(ops)) == 1, what="the worker's dead letter")
        first = undecodable(ops)
        assert ops.replay_dead_letters(first) == 1
        wait_for(lambda: undecodable(ops) not in ([], first), what="the replayed entry dead-lettered again")
    assert admin.acl_log() == []


def test_after_a_redis_restart_every_service_logs_in_again_and_runs_work(
    stack: LocalStack, client: Client, admin: redis.Redis
) -> None:
    stack.restart("redis")  # the same port, certificate and users; every connection is new
    with workflow("closed-redis-after-restart") as wf:
        source(task_id="src", value=5)
    run = client.submit(wf)
    assert run.result(timeout=90) == 5
    users = {c["user"] for c in admin.client_list()}
    assert users == {"scheduler", "coordinator", "result-store", "worker", "default"}
    assert [(e["username"], e["context"], e["object"], e["reason"]) for e in admin.acl_log()] == []


@pytest.mark.parametrize("root", sorted(SCRIPT_USERS))
def test_every_command_of_a_lua_script_is_granted_to_the_user_that_runs_it(root: str) -> None:
    """A static guard beside the end-to-end proof: a script that starts calling a command its
    service's user lacks fails here, naming it, before it fails in production."""
    path = Path(root)
    scripts = [path] if path.suffix == ".lua" else sorted(path.rglob("*.lua"))
    assert scripts, f"no Lua script under {root}"
    for script in scripts:
        for command, subcommand in _CALL.findall(script.read_text()):
            name = command.lower()
            if name in _WITH_SUBCOMMAND:
                name = f"{name}|{subcommand.lower()}"
            for user in SCRIPT_USERS[root]:
                assert name in user.commands, f"{script} calls {name}, not granted to Redis user {user.name}"
