"""Small results carried inline in outcomes (``TaskOutcome.result``): the scheduler stores them in the
run's result hash (the result-store's layout, graflow_runtime.keys) in the script that applies the
outcome, only when it applies it. Outcomes on gf:outcomes, a started scheduler, the real Redis."""

import asyncio

from graflow_api.v1 import common_pb2, messages_pb2, result_store_pb2, scheduler_pb2
from graflow_runtime import keys

from graflow_scheduler.testing.app import app_client, report, run_end, submit
from graflow_scheduler.testing.enqueued import wait_enqueued
from graflow_scheduler.testing.specs import node, outcome, spec

CHAIN = spec(["a", "b"], ["a>b"])
RETRIED = spec([node("a", retry=common_pb2.RetryPolicy(max_attempts=3, initial_interval_ms=1)), "b"], ["a>b"])


async def stored(redis, run_id, node_id):
    """(NodeResult, attempt) in the run's result hashes, or (None, None)."""
    raw, attempt = await asyncio.gather(
        redis.hget(keys.results(run_id), node_id), redis.hget(keys.result_attempts(run_id), node_id)
    )
    if raw is None:
        return None, attempt
    return result_store_pb2.NodeResult.FromString(raw), int(attempt)


async def dead_letters(redis):
    entries = await redis.xrange(keys.DEAD_LETTERS_STREAM)
    return [messages_pb2.DeadLetter.FromString(fields[b"d"]) for _, fields in entries]


async def consumed(redis):
    """Wait until the scheduler has read and acknowledged everything on gf:outcomes."""
    for _ in range(1000):
        last = (await redis.xinfo_stream(keys.OUTCOMES_STREAM))["last-generated-id"]
        (group,) = await redis.xinfo_groups(keys.OUTCOMES_STREAM)
        if group["last-delivered-id"] == last and group["pending"] == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the scheduler did not consume every outcome")


async def test_an_inline_result_is_stored_with_the_outcome_that_releases_its_successor(
    redis, make_app
):
    app = await make_app(retention_s=5000)
    async with app_client(app) as own:
        run_id = await submit(own, CHAIN)
        await report(redis, outcome(run_id, "a", value=b'{"n": 1}'))
        await wait_enqueued(redis, lambda c: c.envelopes(run_id, "b"))
    result, attempt = await stored(redis, run_id, "a")
    assert attempt == 1
    assert (result.run_id, result.node_id, result.attempt, result.value.data) == (run_id, "a", 1, b'{"n": 1}')
    assert result.task_type == "t_a" and result.stored_at_ms > 0
    # The result-store's expiry semantics, with the scheduler's retention: both hashes expire.
    for key in (keys.results(run_id), keys.result_attempts(run_id)):
        assert 4900 < await redis.ttl(key) <= 5000


async def test_a_run_ending_with_an_inline_result_answers_wait_run_with_it(client, redis):
    run_id = await submit(client, spec(["a"]))
    await report(redis, outcome(run_id, "a", value=b"[1, 2]"))
    answer = await client.WaitRun(scheduler_pb2.WaitRunRequest(run_id=run_id, wait_ms=10_000))
    assert answer.run.status == common_pb2.RUN_STATUS_SUCCEEDED
    assert answer.results_inline
    assert [(r.node_id, r.value.data) for r in answer.results] == [("a", b"[1, 2]")]


async def test_a_stale_or_duplicate_outcome_stores_nothing_and_the_applied_attempt_wins(
    app, client, redis
):
    run_id = await submit(client, RETRIED)
    await report(redis, outcome(run_id, "a", ok=False))
    await wait_enqueued(redis, lambda c: len(c.envelopes(run_id, "a")) == 2)
    # Attempt 1 reports a success after its failure was applied: stale, nothing is stored.
    await report(redis, outcome(run_id, "a", attempt=1, value=b'"stale"'))
    await consumed(redis)
    assert app.consumer.stats.stale == 1
    assert await stored(redis, run_id, "a") == (None, None)
    await report(redis, outcome(run_id, "a", attempt=2, value=b'"second"'))
    # A redelivered outcome of the applied attempt with another value is a duplicate: the first stays.
    await report(redis, outcome(run_id, "a", attempt=2, value=b'"again"'))
    await consumed(redis)
    assert app.consumer.stats.duplicates == 1
    await report(redis, outcome(run_id, "b"))
    assert await run_end(client, run_id) == "TYPE_RUN_SUCCEEDED"
    result, attempt = await stored(redis, run_id, "a")
    assert (result.value.data, attempt) == (b'"second"', 2)


async def test_a_result_the_result_store_holds_for_a_later_attempt_is_not_replaced(client, redis):
    run_id = await submit(client, spec(["a", "b"], ["a>b"]))
    later = result_store_pb2.NodeResult(run_id=run_id, node_id="a", attempt=3)
    later.value.data = b'"later"'
    # As the result-store's put_results.lua leaves it after a PutResults of attempt 3.
    await redis.hset(keys.results(run_id), "a", later.SerializeToString())
    await redis.hset(keys.result_attempts(run_id), "a", 3)
    await report(redis, outcome(run_id, "a", value=b'"first"'))
    await report(redis, outcome(run_id, "b", value=b'"b"'))
    assert await run_end(client, run_id) == "TYPE_RUN_SUCCEEDED"
    result, attempt = await stored(redis, run_id, "a")
    assert (result.value.data, attempt) == (b'"later"', 3)
    assert (await stored(redis, run_id, "b"))[0].value.data == b'"b"'


async def test_outcomes_of_an_ended_run_store_no_result(app, client, redis):
    run_id = await submit(client, spec(["a", "b"]))
    await client.CancelRun(scheduler_pb2.CancelRunRequest(run_id=run_id, reason="enough"))
    await report(redis, outcome(run_id, "a", value=b'"late"'))
    await consumed(redis)
    assert app.consumer.stats.ignored == 1
    assert await redis.exists(keys.results(run_id), keys.result_attempts(run_id)) == 0


async def test_an_invalid_inline_result_dead_letters_its_outcome_and_stores_nothing(app, client, redis):
    run_id = await submit(client, spec(["a", "b", "c"]))
    elsewhere = outcome(run_id, "a", value=b"1")
    elsewhere.result.node_id = "b"  # names another node
    on_failure = outcome(run_id, "b", ok=False, value=b"2")
    canceled = outcome(run_id, "c", value=b"3")
    canceled.status = messages_pb2.TaskOutcome.STATUS_CANCELED
    too_large = outcome(run_id, "c", value=b"x" * (1024 * 1024 + 1))
    await report(redis, elsewhere, on_failure, canceled, too_large)
    await consumed(redis)
    letters = await dead_letters(redis)
    assert [letter.node_id for letter in letters] == ["a", "b", "c", "c"]
    assert all("invalid outcome" in letter.reason for letter in letters)
    assert "names run" in letters[0].reason and "not a success" in letters[1].reason
    assert "over the limit" in letters[3].reason
    assert await redis.exists(keys.results(run_id), keys.result_attempts(run_id)) == 0
    run = await client.GetRun(scheduler_pb2.GetRunRequest(run_id=run_id))
    assert run.status == common_pb2.RUN_STATUS_RUNNING


async def test_an_outcome_without_an_inline_result_stores_nothing(client, redis):
    """Results stored by PutResults (large ones, and every result of workers older than inline
    results): the outcome only says has_result, and the scheduler writes no result."""
    run_id = await submit(client, spec(["a"]))
    success = outcome(run_id, "a")
    success.has_result = True
    await report(redis, success)
    assert await run_end(client, run_id) == "TYPE_RUN_SUCCEEDED"
    assert await redis.exists(keys.results(run_id), keys.result_attempts(run_id)) == 0
