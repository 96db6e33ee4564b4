"""The worker under failures and shutdown: result-store outage, failing heartbeats, restarts with
the same id, several workers on one queue, graceful drain."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from graflow_api.v1 import coordinator_pb2 as co_pb2
from graflow_api.v1 import messages_pb2
from graflow_runtime import keys
from graflow_runtime.local_redis import LocalRedis
from graflow_runtime.redis_client import connect

from graflow_worker.committer import PAUSE_RESULT_STORE
from graflow_worker.membership import PAUSE_HEARTBEAT
from graflow_worker.testing.services import (
    Stack,
    enqueue,
    envelope,
    eventually,
    outcomes,
    pending_count,
    wait_outcomes,
)
from graflow_worker.testing.tasks import PROBE

SUCCEEDED = messages_pb2.TaskOutcome.STATUS_SUCCEEDED



async def test_result_store_outage_acknowledges_nothing_and_recovers_by_itself(stack):
    await stack.store_server.stop()
    # Queued before the worker starts, so that its first read takes all three (entries arriving one
    # by one could pause the intake before the last one was read).
    await enqueue(stack.redis, *[envelope("r1", f"n{i}", "add", args={"a": i}) for i in range(3)])
    worker = await stack.start_worker()
    await eventually(lambda: PAUSE_RESULT_STORE in worker.paused_reasons, what="the intake to pause")
    assert await outcomes(stack.redis) == []
    assert await pending_count(stack.redis) == 3

    # While paused, no new entry is taken.
    await eventually(worker.intake.idle.is_set, what="the read loop to wait")
    await enqueue(stack.redis, envelope("r1", "later", "add", args={"a": 9}))
    beats = len(stack.coordinator.heartbeats)
    await eventually(lambda: len(stack.coordinator.heartbeats) >= beats + 3, what="heartbeats")
    assert await pending_count(stack.redis) == 3

    await stack.store_server.start()  # same port
    found = await wait_outcomes(stack.redis, 4, timeout=30)
    assert {o.node_id for o in found} == {"n0", "n1", "n2", "later"}
    assert all(o.status == SUCCEEDED for o in found)
    assert await pending_count(stack.redis) == 0
    assert stack.store.value("r1", "n2") == 12
    await eventually(lambda: not worker.paused_reasons, what="the intake to resume")


async def test_worker_that_cannot_heartbeat_beyond_its_lease_takes_no_work(stack):
    worker = await stack.start_worker()
    stack.coordinator.fail_heartbeats = True
    await eventually(lambda: PAUSE_HEARTBEAT in worker.paused_reasons, what="the intake to pause")
    await eventually(worker.intake.idle.is_set, what="the read loop to wait")
    await enqueue(stack.redis, envelope("r1", "a", "add", args={"a": 1}))
    failed = stack.coordinator.failed_heartbeats
    await eventually(lambda: stack.coordinator.failed_heartbeats >= failed + 2, what="more heartbeats")
    assert await pending_count(stack.redis) == 0
    assert await outcomes(stack.redis) == []

    stack.coordinator.fail_heartbeats = False
    [outcome] = await wait_outcomes(stack.redis, 1)
    assert outcome.node_id == "a" and outcome.status == SUCCEEDED
    assert not worker.paused_reasons


async def test_worker_forgotten_by_the_coordinator_registers_again(stack):
    worker = await stack.start_worker()
    stack.coordinator.live.clear()
    await eventually(lambda: len(stack.coordinator.registrations) >= 2, what="a second registration")
    assert stack.coordinator.registrations[-1].worker_id == worker.worker_id
    await enqueue(stack.redis, envelope("r1", "a", "add", args={"a": 1}))
    await wait_outcomes(stack.redis, 1)


async def test_own_pending_entries_are_resumed_after_a_restart_with_the_same_id(stack):
    stream = keys.queue_stream("default")
    await stack.redis.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
    await enqueue(stack.redis, *[envelope("r1", f"held{i}", "add", args={"a": i}) for i in range(3)])
    # A previous process of worker "w-same" read these and died before committing them.
    await stack.redis.xreadgroup(keys.WORKER_GROUP, "w-same", {stream: ">"}, count=10)
    assert await pending_count(stack.redis) == 3
    await enqueue(stack.redis, envelope("r1", "new", "add", args={"a": 7}))

    await stack.start_worker(worker_id="w-same")
    found = await wait_outcomes(stack.redis, 4)
    assert {o.node_id for o in found} == {"held0", "held1", "held2", "new"}
    assert await pending_count(stack.redis) == 0


async def test_two_workers_on_one_queue_never_run_the_same_entry(stack):
    first = await stack.start_worker(concurrency=4)
    second = await stack.start_worker(concurrency=4)
    await enqueue(stack.redis, *[envelope("r1", f"n{i}", "tracked", args={"tag": f"n{i}", "hold_s": 0.001})
                                 for i in range(200)])
    found = await wait_outcomes(stack.redis, 200, timeout=30)
    assert len(found) == 200
    assert len({o.node_id for o in found}) == 200
    assert set(PROBE.calls.values()) == {1} and len(PROBE.calls) == 200
    assert {o.worker_id for o in found} <= {first.worker_id, second.worker_id}
    assert await pending_count(stack.redis) == 0


async def test_shutdown_finishes_and_commits_work_in_flight_takes_nothing_new_and_deregisters(stack):
    worker = stack.worker()
    shutdown = asyncio.Event()
    running = asyncio.create_task(worker.run(shutdown))
    await eventually(lambda: worker.started, what="the worker to start")
    await enqueue(stack.redis, envelope("r1", "inflight", "hold", args={"key": "drain"}))
    await eventually(lambda: "drain" in PROBE.started, what="the task to start")

    shutdown.set()  # what SIGTERM does
    async with grpc.aio.insecure_channel(worker.health_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def not_serving() -> bool:
            response = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            return response.status == health_pb2.HealthCheckResponse.NOT_SERVING

        await eventually(not_serving, what="NOT_SERVING")
    await eventually(lambda: all(task.done() for task in worker._read_tasks), what="the read loops to stop")
    await enqueue(stack.redis, envelope("r1", "after", "add", args={"a": 1}))
    assert not running.done()

    PROBE.release("drain")
    await asyncio.wait_for(running, 15)
    [outcome] = await outcomes(stack.redis)
    assert outcome.node_id == "inflight" and outcome.status == SUCCEEDED
    assert await pending_count(stack.redis) == 0
    assert (await stack.redis.xinfo_groups(keys.queue_stream("default")))[0]["lag"] == 1
    assert stack.coordinator.deregistrations == [worker.worker_id]


async def test_work_unfinished_within_the_grace_period_stays_pending(stack):
    worker = await stack.start_worker(shutdown_grace_s=0.2)
    await enqueue(stack.redis, envelope("r1", "stuck", "hold", args={"key": "stuck"}))
    await eventually(lambda: "stuck" in PROBE.started, what="the task to start")
    await worker.stop()
    assert await outcomes(stack.redis) == []
    pending = await stack.redis.xpending(keys.queue_stream("default"), keys.WORKER_GROUP)
    assert pending["pending"] == 1
    assert pending["consumers"] == [{"name": worker.worker_id.encode(), "pending": 1}]
    assert stack.coordinator.deregistrations == [worker.worker_id]
    PROBE.release("stuck")


async def test_drain_command_from_the_coordinator_stops_the_worker(stack):
    worker = stack.worker()
    running = asyncio.create_task(worker.run(asyncio.Event()))
    await eventually(lambda: worker.started, what="the worker to start")
    stack.coordinator.commands = [co_pb2.HeartbeatResponse.COMMAND_DRAIN]
    await asyncio.wait_for(running, 15)
    assert stack.coordinator.deregistrations == [worker.worker_id]


async def test_worker_waits_for_the_coordinator_before_reading(stack):
    await stack.coordinator_server.stop()
    worker = stack.worker()
    starting = asyncio.create_task(worker.start())
    await enqueue(stack.redis, envelope("r1", "a", "add", args={"a": 1}))

    async def groups_created() -> bool:  # the last step of start before registration
        return bool(await stack.redis.xinfo_groups(keys.queue_stream("default")))

    await eventually(groups_created, what="start to reach registration")
    assert not starting.done() and not stack.coordinator.registrations
    assert await pending_count(stack.redis) == 0
    await stack.coordinator_server.start()
    await asyncio.wait_for(starting, 15)
    await wait_outcomes(stack.redis, 1)


async def test_worker_carries_on_after_redis_is_killed_and_restarted(tmp_path):
    PROBE.reset()
    with LocalRedis(directory=tmp_path) as server:
        client = connect(server.url)  # reconnects after the restart
        try:
            async with Stack(client, server.url) as stack:
                await stack.start_worker(read_block_ms=200)
                await enqueue(client, envelope("r1", "before", "add", args={"a": 1}))
                await wait_outcomes(client, 1)
                server.restart(kill=True)  # AOF with fsync always: the stream and group survive
                await enqueue(client, envelope("r1", "after", "add", args={"a": 2}))
                found = await wait_outcomes(client, 2, timeout=30)
                assert [o.node_id for o in found] == ["before", "after"]
                assert await pending_count(client) == 0
        finally:
            await client.aclose()


async def test_a_stopping_worker_says_goodbye_on_its_heartbeat_stream_before_deregistering(stack):
    worker = await stack.start_worker()
    await eventually(lambda: stack.coordinator.heartbeats, what="a streamed heartbeat")
    await worker.stop()
    assert stack.coordinator.goodbyes == [worker.worker_id]
    assert stack.coordinator.deregistrations == [worker.worker_id]


async def test_a_coordinator_without_the_heartbeat_stream_gets_unary_heartbeats(stack):
    stack.coordinator.streams = False
    worker = await stack.start_worker()
    await eventually(lambda: len(stack.coordinator.heartbeats) >= 2, what="unary heartbeats")
    await enqueue(stack.redis, envelope("r1", "a", "add", args={"a": 1}))
    await wait_outcomes(stack.redis, 1)
    assert not worker.paused_reasons
    await worker.stop()
    assert stack.coordinator.goodbyes == []
