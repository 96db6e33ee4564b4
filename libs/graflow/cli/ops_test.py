"""The operators' commands (`graflow workers`, `queues`, `dead-letters ...`) and the workflow
registry's (`graflow workflows ...`) against a real stack."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

from graflow.cli.testing.capture import Captured
from graflow.devstack import LocalStack
from graflow.operators import Operators
from graflow_api.v1 import messages_pb2
from graflow_examples import TASK_MODULES
from graflow_examples.etl import etl
from graflow_runtime import keys
from graflow_runtime.limits import DEAD_LETTERS_PAGE_MAX
from graflow_runtime.local_redis import free_port


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(workers=1, task_modules=TASK_MODULES) as running:
        yield running


@pytest.fixture
def cli(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> Captured:
    for name, value in stack.client_env().items():
        monkeypatch.setenv(name, value)
    return Captured()


@pytest.fixture
def letters(stack: LocalStack) -> Iterator[list[str]]:
    """Three dead letters of deliveries to the queue 'parked' (no worker reads it); their ids."""
    conn = redis.Redis.from_url(stack.redis_url)
    conn.delete(keys.DEAD_LETTERS_STREAM, keys.queue_stream("parked"))
    ids = []
    for i in range(3):
        env = messages_pb2.TaskEnvelope(
            run_id="run-x", node_id=f"n{i}", task_type="extract", attempt=5, args_json=b'{"day": 3}',
            queue="parked", lost_attempts=4,
        )
        letter = messages_pb2.DeadLetter(
            queue="parked", original_id=f"1-{i}", raw=env.SerializeToString(), dead_at_ms=1_700_000_000_000,
            reason=f"poison message: the worker running it died 5 times (letter {i})",
            run_id="run-x", node_id=f"n{i}", attempt=5,
        )
        ids.append(conn.xadd(keys.DEAD_LETTERS_STREAM, {b"d": letter.SerializeToString()}).decode())
    yield ids
    conn.close()


def test_workers_lists_the_live_workers(cli):
    assert cli("workers") == 0
    header, *rows = cli.out.splitlines()
    assert header.split()[:4] == ["WORKER", "HOST", "PID", "QUEUES"]
    assert [row.split()[0] for row in rows] == ["dev-worker-0"]
    assert "default" in rows[0]


def test_dead_letters_list_shows_ids_and_reasons_oldest_first(cli, letters):
    assert cli("dead-letters", "list", "--limit", "2") == 0
    rows = cli.out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == letters[:2]
    assert "the worker running it died 5 times" in rows[0]
    rest = Captured()
    assert rest("dead-letters", "list", "--after", letters[1]) == 0
    assert [row.split()[0] for row in rest.out.splitlines()[1:]] == letters[2:]


def test_workers_and_dead_letters_print_json_with_o_json(cli, letters):
    assert cli("workers", "-o", "json") == 0
    (worker,) = json.loads(cli.out)
    assert (worker["worker_id"], worker["queues"]) == ("dev-worker-0", ["default"])
    listing = Captured()
    assert listing("dead-letters", "list", "-o", "json") == 0
    assert [letter["id"] for letter in json.loads(listing.out)] == letters
    shown = Captured()
    assert shown("dead-letters", "show", letters[1], "-o", "json") == 0
    letter = json.loads(shown.out)
    assert (letter["id"], letter["attempt"], letter["dead_at_ms"]) == (letters[1], 5, 1_700_000_000_000)
    assert letter["envelope"]["task_type"] == "extract"
    assert letter["envelope"]["args_json"] == {"day": 3}


def test_dead_letters_show_decodes_the_envelope(cli, letters):
    assert cli("dead-letters", "show", letters[1]) == 0
    assert f"id           {letters[1]}" in cli.out
    assert "task type    extract" in cli.out
    assert "attempt      5 (lost with a worker before: 4)" in cli.out
    assert 'args         {"day": 3}' in cli.out


def test_showing_an_unknown_dead_letter_exits_2_naming_it(cli, letters):
    assert cli("dead-letters", "show", "1-1") == 2
    assert "no dead letter '1-1'" in cli.err


def test_replay_puts_the_named_dead_letters_back_on_their_queue(cli, letters, stack):
    assert cli("dead-letters", "replay", letters[0], letters[2]) == 0
    assert "replayed 2 dead letter(s)" in cli.out
    with Operators(stack.coordinator_address) as ops:
        assert [letter.id for letter in ops.dead_letters()] == [letters[1]]
    conn = redis.Redis.from_url(stack.redis_url)
    try:
        entries = conn.xrange(keys.queue_stream("parked"))
        queued = [messages_pb2.TaskEnvelope.FromString(f[b"e"]) for _, f in entries]
    finally:
        conn.close()
    assert [env.node_id for env in queued] == ["n0", "n2"]


def test_replay_all_empties_the_dead_letters(cli, letters, stack):
    assert cli("dead-letters", "replay", "--all") == 0
    assert "replayed 3 dead letter(s)" in cli.out
    with Operators(stack.coordinator_address) as ops:
        assert ops.dead_letters() == []


def test_replay_all_replays_every_page_of_dead_letters(cli, letters, stack):
    """A ReplayDeadLetters call with `all` replays at most a page (DEAD_LETTERS_PAGE_MAX); the
    command follows the cursor until the end, so one command still replays them all."""
    conn = redis.Redis.from_url(stack.redis_url)
    try:
        _, fields = conn.xrange(keys.DEAD_LETTERS_STREAM, count=1)[0]
        with conn.pipeline(transaction=False) as pipe:
            for _ in range(DEAD_LETTERS_PAGE_MAX + 2):
                pipe.xadd(keys.DEAD_LETTERS_STREAM, fields)
            pipe.execute()
        total = conn.xlen(keys.DEAD_LETTERS_STREAM)
        assert total == DEAD_LETTERS_PAGE_MAX + 5

        assert cli("dead-letters", "replay", "--all") == 0

        assert f"replayed {total} dead letter(s)" in cli.out
        assert conn.xlen(keys.DEAD_LETTERS_STREAM) == 0
        assert conn.xlen(keys.queue_stream("parked")) == total
    finally:
        conn.close()


def test_replaying_an_unknown_id_replays_nothing_and_exits_2(cli, letters, stack):
    assert cli("dead-letters", "replay", letters[0], "1-1") == 2
    assert "1-1" in cli.err
    with Operators(stack.coordinator_address) as ops:
        assert len(ops.dead_letters()) == 3


def test_replay_needs_ids_or_all():
    cli = Captured()
    assert cli("--coordinator", "127.0.0.1:1", "dead-letters", "replay") == 2
    assert "--all" in cli.err


def test_unreachable_coordinator_exits_2_with_its_address():
    address = f"127.0.0.1:{free_port()}"
    cli = Captured()
    assert cli("--coordinator", address, "--timeout", "3", "workers") == 2
    assert f"cannot reach the coordinator at {address}" in cli.err


def test_delete_removes_the_named_dead_letters_and_counts_those_not_found(cli, letters, stack):
    assert cli("dead-letters", "delete", letters[0], letters[2], "1-1") == 0
    assert cli.out.strip() == "deleted 2 dead letter(s), 1 not found"
    with Operators(stack.addresses["coordinator"]) as ops:
        assert [letter.id for letter in ops.dead_letters()] == [letters[1]]


def test_queues_lists_each_queue_with_its_depth_and_workers(cli, letters, stack):
    with Operators(stack.addresses["coordinator"]) as ops:
        ops.replay_dead_letters(letters)  # three deliveries to 'parked', which no worker reads

    assert cli("queues", "-o", "json") == 0

    queues = {q["queue"]: q for q in json.loads(cli.out)}
    assert int(queues["parked"]["length"]) == 3
    assert queues["parked"].get("workers", 0) == 0
    assert queues["default"]["workers"] == 1


def test_a_workflow_is_registered_listed_submitted_by_name_and_deleted(cli):
    assert cli("workflows", "register", "graflow_examples.etl:etl", "--name", "etl-cli",
               "--description", "from the CLI", "--defaults", '{"day": "mon"}') == 0
    assert cli.out.strip() == "registered etl-cli (version 1)"
    assert cli("workflows", "list") == 0
    assert any(row.split()[:2] == ["etl-cli", "1"] for row in cli.out.splitlines()[1:])

    assert cli("workflows", "submit", "etl-cli", "--args", '{"day": "tue"}', "--wait") == 0

    assert cli("workflows", "delete", "etl-cli") == 0
    assert cli("workflows", "submit", "etl-cli") == 2
    assert "etl-cli" in cli.err
    assert cli("workflows", "register", "graflow_examples.etl:etl", "--defaults", "[1]") == 2


def test_the_sdk_lists_runs_by_workflow_labels_and_time_and_counts_them(stack):
    with stack.client() as client:
        first = client.submit(etl, labels={"batch": "b1"})
        client.submit(etl, labels={"batch": "b2"}).result(timeout=60)
        first.result(timeout=60)

        assert [r.run_id for r in client.list_runs(workflow="etl", labels={"batch": "b1"})] == [first.id]
        assert client.list_runs(workflow="no-such-workflow") == []
        assert client.list_runs(created_after=time.time() + 3600) == []
        counts = client.count_runs()
        assert counts["SUCCEEDED"] >= 2 and counts["TOTAL"] >= counts["SUCCEEDED"]
