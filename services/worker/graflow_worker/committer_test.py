"""The commit's split by INLINE_RESULT_MAX_BYTES: small results ride in their outcome (the scheduler
stores them), larger ones go through PutResults first. Real Redis, the result-store double."""

from __future__ import annotations

from graflow import payload
from graflow_api.v1 import messages_pb2

from graflow_worker.committer import PAUSE_RESULT_STORE
from graflow_worker.testing.services import (
    enqueue,
    envelope,
    eventually,
    outcomes,
    pending_count,
    wait_outcomes,
)

SUCCEEDED = messages_pb2.TaskOutcome.STATUS_SUCCEEDED
# Encoded NodeResult bytes: a 10-character result is ~70 bytes here, a 1,000-character one ~1,060.
LIMIT = 200


def small(node_id: str) -> messages_pb2.TaskEnvelope:
    return envelope("r1", node_id, "repeat", args={"text": "s", "times": 10})


def large(node_id: str) -> messages_pb2.TaskEnvelope:
    return envelope("r1", node_id, "repeat", args={"text": "L", "times": 1000})


async def test_results_up_to_the_limit_go_inline_and_larger_ones_through_put_results(stack):
    await enqueue(stack.redis, small("s1"), large("l1"), small("s2"), large("l2"))
    await stack.start_worker(inline_result_max_bytes=LIMIT, concurrency=8)
    found = {o.node_id: o for o in await wait_outcomes(stack.redis, 4)}
    assert all(o.status == SUCCEEDED and o.has_result for o in found.values())
    for node_id in ("s1", "s2"):
        inline = found[node_id].result
        assert (inline.run_id, inline.node_id, inline.attempt) == ("r1", node_id, 1)
        assert inline.task_type == "repeat"
        assert inline.worker_id == found[node_id].worker_id
        assert inline.ByteSize() <= LIMIT
        assert payload.decode(inline.value) == "s" * 10
        assert ("r1", node_id) not in stack.store.results
    for node_id in ("l1", "l2"):
        assert not found[node_id].HasField("result")
        assert stack.store.value("r1", node_id) == "L" * 1000
    assert await pending_count(stack.redis) == 0


async def test_a_batch_of_small_results_makes_no_put_results(stack):
    await enqueue(stack.redis, *[small(f"s{i}") for i in range(20)])
    await stack.start_worker(inline_result_max_bytes=LIMIT, concurrency=8)
    found = await wait_outcomes(stack.redis, 20)
    assert all(o.HasField("result") for o in found)
    assert stack.store.put_calls == 0
    assert stack.store.results == {}


async def test_limit_zero_sends_every_result_through_put_results(stack):
    await enqueue(stack.redis, small("s1"))
    await stack.start_worker(inline_result_max_bytes=0)
    [outcome] = await wait_outcomes(stack.redis, 1)
    assert outcome.has_result and not outcome.HasField("result")
    assert stack.store.value("r1", "s1") == "s" * 10
    assert stack.store.put_calls == 1


async def test_small_results_commit_while_the_result_store_is_down_and_large_ones_wait_for_it(stack):
    await stack.store_server.stop()
    worker = await stack.start_worker(inline_result_max_bytes=LIMIT, concurrency=1)
    await enqueue(stack.redis, small("s1"), small("s2"))
    found = await wait_outcomes(stack.redis, 2)
    assert {o.node_id for o in found} == {"s1", "s2"}
    assert await pending_count(stack.redis) == 0
    assert PAUSE_RESULT_STORE not in worker.paused_reasons

    # A large result needs the result-store: its outcome is held, unacknowledged, intake paused.
    await enqueue(stack.redis, large("l1"), small("s3"))
    await eventually(lambda: PAUSE_RESULT_STORE in worker.paused_reasons, what="the intake to pause")
    assert [o.node_id for o in await outcomes(stack.redis)] == ["s1", "s2"]
    assert await pending_count(stack.redis) == 1

    await stack.store_server.start()  # same port
    found = await wait_outcomes(stack.redis, 4, timeout=30)
    assert [o.node_id for o in found] == ["s1", "s2", "l1", "s3"]
    assert stack.store.value("r1", "l1") == "L" * 1000
    assert await pending_count(stack.redis) == 0
    await eventually(lambda: not worker.paused_reasons, what="the intake to resume")
