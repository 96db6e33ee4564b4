"""One bad outcome fails only itself (issue 14): a batch on gf:outcomes with one outcome whose
directive carries deeply nested JSON among good ones. A started scheduler, the real Redis."""

import asyncio

from graflow_api.v1 import messages_pb2, scheduler_pb2
from graflow_runtime import keys
from graflow_runtime.limits import MAX_JSON_DEPTH

from graflow_scheduler.outcomes.inline_results_test import consumed, dead_letters
from graflow_scheduler.testing.app import run_end as watch_to_end
from graflow_scheduler.testing.app import submit
from graflow_scheduler.testing.specs import node, outcome, spec

DEEP = b"[" * 100_000 + b"]" * 100_000


def with_directive(run_id, node_id, directive):  # type: ignore[no-untyped-def]
    result = outcome(run_id, node_id)
    result.directives.append(directive)
    return result


async def report_as_one_batch(redis, *outcomes):  # type: ignore[no-untyped-def]
    """Appended in one transaction: the consumer reads them in one batch."""
    async with redis.pipeline(transaction=True) as pipe:
        for item in outcomes:
            pipe.xadd(keys.OUTCOMES_STREAM, {keys.OUTCOME_FIELD: item.SerializeToString()})
        await pipe.execute()


async def run_end(client, run_id):  # type: ignore[no-untyped-def]
    """Before the fix the whole batch failed and was re-read: the runs never ended."""
    return await asyncio.wait_for(watch_to_end(client, run_id), 15)


async def test_deeply_nested_json_in_one_outcome_fails_its_node_alone(app, client, redis):
    good = await submit(client, spec(["a", "c"]))
    bad = await submit(client, spec([node("b", max_cycles=5)]))
    deep_data = messages_pb2.Directive(next_iteration=messages_pb2.NextIteration(data_json=DEEP))
    deep_args = messages_pb2.Directive(next_task=messages_pb2.NextTask(task_type="t", args_json=DEEP))
    await report_as_one_batch(
        redis,
        outcome(good, "a"),
        with_directive(bad, "b", deep_data),
        outcome(good, "c"),
    )
    assert await run_end(client, good) == "TYPE_RUN_SUCCEEDED"
    assert await run_end(client, bad) == "TYPE_RUN_FAILED"
    info = await client.GetRun(scheduler_pb2.GetRunRequest(run_id=bad))
    assert info.error.type == "InvalidDirective"
    assert f"nested deeper than {MAX_JSON_DEPTH}" in info.error.message
    assert "next_iteration data" in info.error.message
    # The same for a task added at run time with such arguments.
    other, fine = await submit(client, spec(["x"])), await submit(client, spec(["y"]))
    await report_as_one_batch(redis, with_directive(other, "x", deep_args), outcome(fine, "y"))
    assert await run_end(client, fine) == "TYPE_RUN_SUCCEEDED"
    assert await run_end(client, other) == "TYPE_RUN_FAILED"
    info = await client.GetRun(scheduler_pb2.GetRunRequest(run_id=other))
    assert "args_json" in info.error.message
    assert f"nested deeper than {MAX_JSON_DEPTH}" in info.error.message
    await consumed(redis)
    assert await dead_letters(redis) == []
    assert app.consumer.stats.dead_lettered == 0


async def test_an_outcome_that_breaks_its_processing_is_dead_lettered_alone_with_the_error(
    app, client, redis
):
    """Any error an outcome raises (here: a dynamic node stored as JSON nested too deep for Python's
    parser, as anyone who can write to Redis could leave it) dead-letters that outcome alone."""
    good, broken = await submit(client, spec(["a"])), await submit(client, spec(["a"]))
    await redis.hset(keys.run_dynamic(broken), "a.next.1", DEEP)
    await report_as_one_batch(redis, outcome(broken, "a.next.1"), outcome(good, "a"))
    assert await run_end(client, good) == "TYPE_RUN_SUCCEEDED"
    await consumed(redis)
    (letter,) = await dead_letters(redis)
    assert (letter.run_id, letter.node_id) == (broken, "a.next.1")
    assert letter.reason.startswith(f"{keys.OUTCOMES_STREAM}: outcome could not be processed: RecursionError")
    assert app.consumer.stats.dead_lettered == 1
