"""The outcome consumer end to end: TaskOutcome bytes appended to gf:outcomes, what it enqueued
and the run state read back from the real Redis."""

import asyncio
import time

import redis.asyncio as aioredis

from graflow_api.v1 import common_pb2, messages_pb2, scheduler_pb2
from graflow_runtime import keys
from graflow_runtime.graphs import graph_hash
from graflow_runtime.limits import DEAD_LETTERS_MAXLEN
from graflow_runtime.runids import new_run_id
from graflow_runtime.testing.streams import fill

from graflow_scheduler.graph.compiler import compile_spec
from graflow_scheduler.testing.app import report, run_end, submit
from graflow_scheduler.testing.enqueued import enqueued, wait_enqueued
from graflow_scheduler.testing.runs import runs_ended
from graflow_scheduler.testing.specs import node, outcome, spec


async def pending_outcomes(redis):
    return (await redis.xpending(keys.OUTCOMES_STREAM, keys.SCHEDULER_GROUP))["pending"]


async def test_outcomes_release_successors_and_finish_the_run(client, redis):
    run_id = await submit(client)
    await report(redis, outcome(run_id, "fetch"))
    found = await wait_enqueued(redis, lambda c: len(c.delivered(run_id)) == 3)
    assert found.delivered(run_id) == [("fetch", 1), ("clean", 1), ("enrich", 1)]
    assert list(found.envelopes(run_id, "clean")[0].envelope.input_node_ids) == ["fetch"]
    await report(redis, outcome(run_id, "clean"), outcome(run_id, "enrich"))
    await wait_enqueued(redis, lambda c: c.envelopes(run_id, "report"))
    (report_node,) = (await enqueued(redis)).envelopes(run_id, "report")
    assert list(report_node.envelope.input_node_ids) == ["clean", "enrich"]
    await report(redis, outcome(run_id, "report"))
    assert await run_end(client, run_id) == "TYPE_RUN_SUCCEEDED"
    assert await pending_outcomes(redis) == 0


async def test_what_a_batch_of_outcomes_released_is_enqueued_before_the_batch_is_acknowledged(
    app, redis, store
):
    await app.consumer.stop()
    await app.sweep.stop()
    workflow = spec(["a", "b"], ["a>b"])
    plan = compile_spec(workflow)
    app.servicer.plans.put(graph_hash(workflow), plan)
    run_ids = [new_run_id() for _ in range(5)]
    for run_id in run_ids:
        await store.create_run(plan, run_id=run_id, graph_hash=graph_hash(workflow), now_ms=1)
    await report(redis, *(outcome(r, "a") for r in run_ids))
    entries = await app.consumer.stream.read_new(100, 10)
    assert await pending_outcomes(redis) == len(run_ids)  # read, not acknowledged yet
    await app.consumer.process(entries)
    found = await enqueued(redis)
    assert sorted(q.envelope.run_id for q in found.deliveries) == sorted(run_ids)
    assert {q.envelope.node_id for q in found.deliveries} == {"b"}
    assert app.consumer.stats.dispatched == len(run_ids)
    assert await pending_outcomes(redis) == 0


async def test_failed_attempt_with_retries_left_is_dispatched_again_with_its_backoff(
    client, downstreams, redis
):
    retry = common_pb2.RetryPolicy(max_attempts=3, initial_interval_ms=700)
    run_id = await submit(client, spec([node("a", retry=retry)]))
    failed_ms = int(time.time() * 1000)
    await report(redis, outcome(run_id, "a", ok=False))
    found = await wait_enqueued(redis, lambda c: len(c.envelopes(run_id, "a")) == 2)
    seen_ms = int(time.time() * 1000)
    second = found.envelopes(run_id, "a")[1]
    assert (second.envelope.attempt, second.envelope.max_attempts) == (2, 3)
    # On the retry timer, due 700 ms after the failure was applied.
    assert failed_ms + 700 <= second.due_ms <= seen_ms + 700
    assert second.envelope.enqueued_at_ms == second.due_ms
    await report(redis, outcome(run_id, "a", attempt=2, ok=False, retryable=False))
    assert await run_end(client, run_id) == "TYPE_RUN_FAILED"


async def test_undecodable_outcome_is_dead_lettered_and_the_consumer_keeps_going(client, downstreams, redis):
    run_id = await submit(client, spec(["a"]))
    await redis.xadd(keys.OUTCOMES_STREAM, {keys.OUTCOME_FIELD: b"\xff\xfe not protobuf"})
    await redis.xadd(keys.OUTCOMES_STREAM, {b"wrong": b"field"})
    await report(redis, messages_pb2.TaskOutcome(run_id=run_id, node_id="a", attempt=1))  # no status
    await report(redis, outcome(run_id, "a"))
    assert await run_end(client, run_id) == "TYPE_RUN_SUCCEEDED"
    letters = [
        messages_pb2.DeadLetter.FromString(f[b"d"]) for _, f in await redis.xrange(keys.DEAD_LETTERS_STREAM)
    ]
    assert [letter.reason.split(": ")[1] for letter in letters] == [
        "undecodable outcome",
        "undecodable outcome",
        "invalid outcome",
    ]
    assert letters[0].reason.startswith(keys.OUTCOMES_STREAM)
    assert letters[0].raw == b"\xff\xfe not protobuf" and letters[0].queue == ""
    assert (letters[2].run_id, letters[2].node_id) == (run_id, "a")
    assert await pending_outcomes(redis) == 0


async def test_a_batch_whose_dispatch_fails_is_not_acknowledged_and_is_applied_again(app, client, redis):
    run_id = await submit(client, spec(["a", "b"], ["a>b"]))
    record = keys.dispatch_record(run_id)
    await redis.delete(record)
    await redis.set(record, "not a hash")  # Redis refuses the dispatch script (WRONGTYPE)
    await report(redis, outcome(run_id, "a"))
    await asyncio.wait_for(_until(lambda: app.consumer.stats.batches >= 2), 10)  # applied again
    assert await pending_outcomes(redis) == 1  # not acknowledged
    assert (await enqueued(redis)).envelopes(run_id, "b") == []
    await redis.delete(record)
    found = await wait_enqueued(redis, lambda c: c.envelopes(run_id, "b"))
    assert [q.envelope.attempt for q in found.envelopes(run_id, "b")] == [1]  # enqueued once
    assert app.consumer.stats.applied == 1 and app.consumer.stats.duplicates >= 1
    await report(redis, outcome(run_id, "b"))
    assert await run_end(client, run_id) == "TYPE_RUN_SUCCEEDED"


async def test_duplicate_outcome_is_counted_and_repeats_the_dispatch_of_released_nodes(app, client, redis):
    run_id = await submit(client, spec(["a", "b"], ["a>b"]))
    await report(redis, outcome(run_id, "a"), outcome(run_id, "a"))
    await asyncio.wait_for(_until(lambda: app.consumer.stats.dispatch_duplicates == 1), 10)
    assert app.consumer.stats.duplicates == 1
    # Dispatched twice, enqueued once (the dispatch record).
    assert [q.envelope.attempt for q in (await enqueued(redis)).envelopes(run_id, "b")] == [1]


async def test_plan_of_a_run_submitted_elsewhere_is_fetched_from_the_result_store(
    app, downstreams, redis, store
):
    workflow = spec(["a"])
    downstreams.result_store.graphs[graph_hash(workflow)] = workflow
    run_id = new_run_id()
    await store.create_run(compile_spec(workflow), run_id=run_id, graph_hash=graph_hash(workflow), now_ms=1)
    await report(redis, outcome(run_id, "a"))
    await asyncio.wait_for(_until_status(redis, run_id, b"SUCCEEDED"), 10)
    assert downstreams.result_store.get_calls == 1


async def test_outcome_of_an_unknown_run_is_acknowledged_and_ignored(app, redis):
    await report(redis, outcome(new_run_id(), "a"))
    await asyncio.wait_for(_until(lambda: app.consumer.stats.ignored == 1), 10)
    assert await pending_outcomes(redis) == 0


async def test_outcomes_left_pending_by_this_consumer_are_applied_at_start(
    make_app, redis, store, downstreams
):
    workflow = spec(["a"])
    downstreams.result_store.graphs[graph_hash(workflow)] = workflow
    run_id = new_run_id()
    await store.create_run(compile_spec(workflow), run_id=run_id, graph_hash=graph_hash(workflow), now_ms=1)
    await redis.xgroup_create(keys.OUTCOMES_STREAM, keys.SCHEDULER_GROUP, id="0", mkstream=True)
    await report(redis, outcome(run_id, "a"))
    await redis.xreadgroup(keys.SCHEDULER_GROUP, "restarted", {keys.OUTCOMES_STREAM: ">"})  # then "crashed"
    await make_app(consumer_name="restarted")
    await asyncio.wait_for(_until_status(redis, run_id, b"SUCCEEDED"), 10)


async def test_outcomes_idle_in_a_dead_replica_are_claimed(make_app, redis, store, downstreams):
    workflow = spec(["a"])
    downstreams.result_store.graphs[graph_hash(workflow)] = workflow
    run_id = new_run_id()
    await store.create_run(compile_spec(workflow), run_id=run_id, graph_hash=graph_hash(workflow), now_ms=1)
    await redis.xgroup_create(keys.OUTCOMES_STREAM, keys.SCHEDULER_GROUP, id="0", mkstream=True)
    await report(redis, outcome(run_id, "a"))
    await redis.xreadgroup(keys.SCHEDULER_GROUP, "dead-replica", {keys.OUTCOMES_STREAM: ">"})
    app = await make_app(claim_idle_ms=100)
    await asyncio.wait_for(_until_status(redis, run_id, b"SUCCEEDED"), 10)
    assert app.consumer.stats.applied == 1
    assert await pending_outcomes(redis) == 0


async def test_outcome_redelivered_too_often_is_dead_lettered_instead_of_applied(make_app, redis, store):
    workflow = spec(["a"])
    run_id = new_run_id()
    await store.create_run(compile_spec(workflow), run_id=run_id, graph_hash=graph_hash(workflow), now_ms=1)
    await redis.xgroup_create(keys.OUTCOMES_STREAM, keys.SCHEDULER_GROUP, id="0", mkstream=True)
    await report(redis, outcome(run_id, "a"))
    for _ in range(3):  # three deliveries to a consumer that "crashed" each time
        await redis.xreadgroup(keys.SCHEDULER_GROUP, "crashy", {keys.OUTCOMES_STREAM: "0" if _ else ">"})
    app = await make_app(consumer_name="crashy", outcome_max_deliveries=3)
    await asyncio.wait_for(_until(lambda: app.consumer.stats.dead_lettered == 1), 10)
    ((_, fields),) = await redis.xrange(keys.DEAD_LETTERS_STREAM)
    letter = messages_pb2.DeadLetter.FromString(fields[b"d"])
    assert "delivered 4 times" in letter.reason and letter.raw == outcome(run_id, "a").SerializeToString()
    assert await redis.hget(keys.run_meta(run_id), "status") == b"RUNNING"
    assert await pending_outcomes(redis) == 0


async def test_trim_keeps_entries_still_pending_and_drops_acknowledged_ones(app, redis):
    await app.consumer.stop()
    stream = app.consumer.stream
    for index in range(3):
        await redis.xadd(keys.OUTCOMES_STREAM, {b"o": b"%d" % index})
    first, second, third = await stream.read_new(3, 10)
    await redis.xack(keys.OUTCOMES_STREAM, keys.SCHEDULER_GROUP, first[0])
    await stream.trim(approximate=False)
    remaining = [entry_id for entry_id, _ in await redis.xrange(keys.OUTCOMES_STREAM)]
    assert remaining == [second[0], third[0]]


async def test_trim_removes_more_than_one_xtrim_limit_of_acknowledged_outcomes(app, redis):
    await app.consumer.stop()
    for start in range(0, 25_000, 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for index in range(start, start + 1000):
                pipe.xadd(keys.OUTCOMES_STREAM, {b"o": b"%d" % index})
            await pipe.execute()
    last = (await redis.xinfo_stream(keys.OUTCOMES_STREAM))["last-generated-id"]
    await redis.xgroup_setid(keys.OUTCOMES_STREAM, keys.SCHEDULER_GROUP, last)

    removed = await app.consumer.stream.trim()

    assert removed > 20_000  # more than one call's limit (10,000)
    assert await redis.xlen(keys.OUTCOMES_STREAM) < 200
    await redis.delete(keys.OUTCOMES_STREAM)  # the session's Redis is restarted by a later test


async def test_consumer_keeps_going_across_a_redis_restart(make_app, local_redis, downstreams):
    app = await make_app(redis_url=local_redis.url)
    workflow = spec(["a"])
    downstreams.result_store.graphs[graph_hash(workflow)] = workflow
    run_id = new_run_id()
    await app.store.create_run(
        compile_spec(workflow), run_id=run_id, graph_hash=graph_hash(workflow), now_ms=1
    )
    local_redis.restart(kill=True)  # scripts are gone afterwards (NOSCRIPT path); data stays (AOF)
    client = aioredis.Redis.from_url(local_redis.url)
    try:
        await report(client, outcome(run_id, "a"))
        await asyncio.wait_for(_until_status(client, run_id, b"SUCCEEDED"), 20)
    finally:
        await client.aclose()


async def _until(check):
    while not check():
        await asyncio.sleep(0.02)


async def _until_status(redis, run_id, status):
    while await redis.hget(keys.run_meta(run_id), "status") != status:
        await asyncio.sleep(0.02)


def canceled(run_id, node_id, attempt=1, *, error_type="RunEnded"):  # type: ignore[no-untyped-def]
    """A worker's STATUS_CANCELED outcome: a delivery skipped (RunEnded) or a body that stopped."""
    result = outcome(run_id, node_id, attempt)
    result.status = messages_pb2.TaskOutcome.STATUS_CANCELED
    result.error.CopyFrom(common_pb2.ErrorInfo(type=error_type, message="the run had ended"))
    return result


async def test_every_end_is_announced_to_the_workers_with_its_status(client, redis):
    ok = await submit(client, spec(["a"]))
    await report(redis, outcome(ok, "a"))
    assert await run_end(client, ok) == "TYPE_RUN_SUCCEEDED"
    failed = await submit(client, spec(["a"]))
    await report(redis, outcome(failed, "a", ok=False, retryable=False))
    assert await run_end(client, failed) == "TYPE_RUN_FAILED"
    assert await runs_ended(redis) == [(ok, "SUCCEEDED"), (failed, "FAILED")]
    info = await client.GetRun(scheduler_pb2.GetRunRequest(run_id=failed))
    assert info.ended_at_ms > 0
    assert int(await redis.hget(keys.run_meta(failed), keys.RUN_ENDED_AT_FIELD)) == info.ended_at_ms


async def test_canceled_outcomes_of_an_ended_run_are_counted_once_and_change_nothing_else(client, redis):
    run_id = await submit(client, spec(["a", "b", "c"]))
    await report(redis, outcome(run_id, "a", ok=False, retryable=False))
    assert await run_end(client, run_id) == "TYPE_RUN_FAILED"
    before = await client.GetRun(scheduler_pb2.GetRunRequest(run_id=run_id))
    events = await redis.xlen(keys.run_events(run_id))
    # b skipped (reported twice: a redelivered outcome), c stopped on the cancel.
    # In one pipeline with outcomes of other statuses (a body that finished after the end).
    async with redis.pipeline(transaction=True) as pipe:
        for item in (outcome(run_id, "c"), canceled(run_id, "b"), canceled(run_id, "b"),
                     canceled(run_id, "c", error_type="TaskCanceledError"), outcome(run_id, "b")):
            pipe.xadd(keys.OUTCOMES_STREAM, {keys.OUTCOME_FIELD: item.SerializeToString()})
        await pipe.execute()
    await _until_consumed(redis)
    after = await client.GetRun(scheduler_pb2.GetRunRequest(run_id=run_id))
    assert (after.skipped_deliveries, after.canceled_attempts) == (1, 1)
    assert (before.skipped_deliveries, before.canceled_attempts) == (0, 0)
    assert [(n.node_id, n.state) for n in after.nodes] == [(n.node_id, n.state) for n in before.nodes]
    assert after.status == before.status and after.error == before.error
    assert await redis.xlen(keys.run_events(run_id)) == events
    assert await redis.xlen(keys.DEAD_LETTERS_STREAM) == 0


async def test_a_canceled_outcome_of_a_live_run_redelivers_the_node_instead_of_failing_it(client, redis):
    run_id = await submit(client, spec(["a", "b"], ["a>b"]))
    await report(redis, canceled(run_id, "a"))
    await wait_enqueued(redis, lambda c: ("a", 2) in c.delivered(run_id))
    info = await client.GetRun(scheduler_pb2.GetRunRequest(run_id=run_id))
    assert common_pb2.RunStatus.Name(info.status) == "RUN_STATUS_RUNNING"
    assert info.skipped_deliveries == 0
    (a,) = (n for n in info.nodes if n.node_id == "a")
    assert a.attempt == 2
    await report(redis, outcome(run_id, "a", 2), outcome(run_id, "b"))
    assert await run_end(client, run_id) == "TYPE_RUN_SUCCEEDED"


async def _until_consumed(redis, timeout=10.0):  # type: ignore[no-untyped-def]
    """Until every outcome appended was applied and acknowledged (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        groups = await redis.xinfo_groups(keys.OUTCOMES_STREAM)
        (group_info,) = (g for g in groups if g["name"] == keys.SCHEDULER_GROUP.encode())
        if group_info["pending"] == 0 and group_info["last-delivered-id"] == (
            await redis.xrevrange(keys.OUTCOMES_STREAM, count=1)
        )[0][0]:
            return
        assert loop.time() < deadline, "outcomes not consumed in time"
        await asyncio.sleep(0.02)


async def test_a_live_runs_node_refused_again_and_again_fails_instead_of_looping(client, redis):
    run_id = await submit(client, spec(["a"]))
    for attempt in range(1, 7):
        await wait_enqueued(redis, lambda c, n=attempt: ("a", n) in c.delivered(run_id))
        await report(redis, canceled(run_id, "a", attempt))
    assert await run_end(client, run_id) == "TYPE_RUN_FAILED"
    info = await client.GetRun(scheduler_pb2.GetRunRequest(run_id=run_id))
    assert info.error.type == "RunEnded"
    assert "refused 5 times" in info.error.message
    assert ("a", 7) not in (await enqueued(redis)).delivered(run_id)


async def test_the_graphs_of_ended_runs_are_not_remembered(app, redis, store):
    """Each run's graph hash is remembered to apply its outcomes without a round trip; an ended
    run's is forgotten, also after a late outcome of the run: the scheduler's memory grew by each
    run's entry (a 1,000,000-task soak, docs/performance.md)."""
    await app.consumer.stop()
    await app.sweep.stop()
    workflow = spec(["a", "b"])
    plan = compile_spec(workflow)
    app.servicer.plans.put(graph_hash(workflow), plan)
    live, ended = new_run_id(), new_run_id()
    for run_id in (live, ended):
        await store.create_run(plan, run_id=run_id, graph_hash=graph_hash(workflow), now_ms=1)
    graphs = app.consumer.batches.graphs

    await report(redis, outcome(live, "a"), outcome(ended, "a", ok=False, retryable=False))
    await app.consumer.process(await app.consumer.stream.read_new(100, 10))
    assert (await redis.hget(keys.run_meta(ended), "status"), live in graphs, ended in graphs) == (
        b"FAILED", True, False
    )

    await report(redis, outcome(ended, "b"))  # b was running when its run failed
    await app.consumer.process(await app.consumer.stream.read_new(100, 10))
    assert ended not in graphs


async def test_the_schedulers_dead_letters_are_capped_like_the_coordinators(client, redis):
    await fill(redis, keys.DEAD_LETTERS_STREAM, DEAD_LETTERS_MAXLEN + 1000)
    run_id = await submit(client, spec(["a"]))
    await redis.xadd(keys.OUTCOMES_STREAM, {keys.OUTCOME_FIELD: b"\xff\xfe not protobuf"})
    await report(redis, outcome(run_id, "a"))
    assert await run_end(client, run_id) == "TYPE_RUN_SUCCEEDED"
    (_, newest), = await redis.xrevrange(keys.DEAD_LETTERS_STREAM, count=1)
    assert "undecodable outcome" in messages_pb2.DeadLetter.FromString(newest[b"d"]).reason
    # Trimmed by whole stream nodes (MAXLEN ~): at most one node (100 entries) above the cap.
    assert DEAD_LETTERS_MAXLEN <= await redis.xlen(keys.DEAD_LETTERS_STREAM) <= DEAD_LETTERS_MAXLEN + 100
