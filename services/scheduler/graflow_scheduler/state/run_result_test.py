"""The read that answers WaitRun (run_result.lua): the run's meta and, once it succeeded, its
sinks' results from the result-store's hash when they are small, in one round trip."""

from graflow_api.v1 import result_store_pb2
from graflow_runtime import keys

from graflow_scheduler.state.store import OutcomeToApply
from graflow_scheduler.testing.runs import RunHarness
from graflow_scheduler.testing.specs import spec


async def store_result(redis, run_id, node_id, data):
    """What the result-store writes for a node (its hash of the run: node -> NodeResult bytes)."""
    result = result_store_pb2.NodeResult(run_id=run_id, node_id=node_id, attempt=1)
    result.value.data = data
    await redis.hset(keys.results(run_id), node_id, result.SerializeToString())


async def succeed_all(run):
    await run.store.apply_outcomes(
        [
            OutcomeToApply(
                run_id=run.run_id,
                node_id=node,
                attempt=1,
                succeeded=True,
                error=b"",
                worker_id="w1",
                retry_delay_ms=-1,
                closure_json=run.plan.closure_json(node, failed=False),
            )
            for node in run.plan.roots
        ],
        now_ms=2_000,
    )


async def test_a_live_run_is_read_without_results(store, reader, redis):
    run = await RunHarness.create(store, spec(["a", "b"], ["a>b"]))
    await store_result(redis, run.run_id, "a", b"1")
    read = await reader.run_result(run.run_id, inline_max_bytes=1000)
    assert (read.meta[b"status"], read.inline, read.results) == (b"RUNNING", False, [])


async def test_a_succeeded_runs_sinks_come_inline_in_sink_order_without_the_missing(store, reader, redis):
    run = await RunHarness.create(store, spec(["p", "q", "r"]))
    await succeed_all(run)
    await store_result(redis, run.run_id, "r", b'"r"')
    await store_result(redis, run.run_id, "p", b'"p"')
    read = await reader.run_result(run.run_id, inline_max_bytes=1000)
    assert (read.meta[b"status"], read.inline) == (b"SUCCEEDED", True)
    assert [(r.node_id, r.value.data) for r in read.results] == [("p", b'"p"'), ("r", b'"r"')]


async def test_sinks_over_the_bound_are_left_to_get_results(store, reader, redis):
    run = await RunHarness.create(store, spec(["p", "q"]))
    await succeed_all(run)
    await store_result(redis, run.run_id, "p", b"x" * 600)
    await store_result(redis, run.run_id, "q", b"x" * 600)
    read = await reader.run_result(run.run_id, inline_max_bytes=1000)
    assert (read.meta[b"status"], read.inline, read.results) == (b"SUCCEEDED", False, [])
    assert (await reader.run_result(run.run_id, inline_max_bytes=2000)).inline


async def test_thousands_of_sinks_are_read_in_chunks(store, reader, redis):
    nodes = [f"n{i}" for i in range(9_000)]
    run = await RunHarness.create(store, spec(nodes))
    await succeed_all(run)
    async with redis.pipeline(transaction=False) as pipe:
        for node in nodes:
            stored = result_store_pb2.NodeResult(node_id=node).SerializeToString()
            pipe.hset(keys.results(run.run_id), node, stored)
        await pipe.execute()
    read = await reader.run_result(run.run_id, inline_max_bytes=1024 * 1024)
    assert read.inline and [r.node_id for r in read.results] == nodes


async def test_an_unknown_run_reads_as_an_empty_meta(reader):
    read = await reader.run_result("01J00000000000000000000000", inline_max_bytes=1000)
    assert (read.meta, read.inline, read.results) == ({}, False, [])
