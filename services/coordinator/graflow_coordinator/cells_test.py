"""The coordinator with the key layout of four cells (docs/architecture.md, "Redis Cluster: cells")
on one real Redis, which names exactly the keys a cluster would: reclaims, the retry timer, dead
letters and the worker registry cover every cell, and every script call stays in one hash slot
(the ``one_slot_scripts`` fixture fails a test at a call that spans slots)."""

from __future__ import annotations

import grpc
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from graflow_api.v1 import coordinator_pb2, coordinator_pb2_grpc, messages_pb2
from graflow_runtime import keys
from graflow_runtime.runids import new_run_id

from graflow_coordinator.conftest import StartCoordinator, envelope, eventually
from graflow_coordinator.deadletters import make_dead_letter
from graflow_coordinator.reclaim import WORKER_LOST

pytestmark = pytest.mark.usefixtures("four_cells")

QUEUE = "default"
# Nobody's lease can expire during a test: whoever is declared dead was declared so by its stream.
LONG_LEASE = {"heartbeat_interval_ms": 1_000, "lease_timeout_ms": 600_000, "liveness_check_ms": 50}


def runs_by_cell() -> dict[int, str]:
    return {cell: new_run_id(cell=cell) for cell in keys.cells()}


async def enqueue(redis: aioredis.Redis, env: messages_pb2.TaskEnvelope) -> bytes:
    """Append ``env`` to its queue's normal lane in its run's cell, as dispatch does."""
    return await redis.xadd(
        keys.queue_stream(env.queue, keys.cell_of(env.run_id)), {keys.ENVELOPE_FIELD: env.SerializeToString()}
    )


async def outcomes_of(redis: aioredis.Redis, cell: int) -> list[messages_pb2.TaskOutcome]:
    entries = await redis.xrange(keys.outcomes_stream(cell))
    return [messages_pb2.TaskOutcome.FromString(fields[keys.OUTCOME_FIELD]) for _, fields in entries]


async def pending_for(redis: aioredis.Redis, consumer: str) -> int:
    """Entries pending for ``consumer`` in every lane of every cell."""
    count = 0
    for cell in keys.cells():
        for lane in keys.queue_lanes(QUEUE, cell):
            rows = await redis.xpending_range(lane, keys.WORKER_GROUP, "-", "+", 100, consumername=consumer)
            count += len(rows)
    return count


async def consumers(redis: aioredis.Redis) -> set[str]:
    """Consumer names in the groups of every lane of every cell."""
    names: set[str] = set()
    for cell in keys.cells():
        for lane in keys.queue_lanes(QUEUE, cell):
            try:
                rows = await redis.xinfo_consumers(lane, keys.WORKER_GROUP)
                names |= {row["name"].decode() for row in rows}
            except ResponseError:
                continue
    return names


async def test_the_deliveries_of_a_worker_that_died_are_reclaimed_in_every_cell(
    start_coordinator: StartCoordinator, redis: aioredis.Redis, one_slot_scripts: list[str]
) -> None:
    """A worker holds a delivery of each cell and its connection goes, as when its process is
    SIGKILLed: its heartbeat stream breaks, the coordinator declares it dead and reports each
    attempt lost in its own cell's outcome stream, then deletes its consumer from every cell."""
    app = await start_coordinator(**LONG_LEASE)
    runs = runs_by_cell()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)
    await stub.RegisterWorker(coordinator_pb2.RegisterWorkerRequest(
        worker_id="w1", queues=[QUEUE], task_types=["fetch"], concurrency=4, hostname="h", pid=1))
    for cell, run_id in runs.items():
        await enqueue(redis, envelope(f"n{cell}", run_id=run_id))
        await redis.xreadgroup(keys.WORKER_GROUP, "w1", {keys.queue_stream(QUEUE, cell): ">"})
    call = stub.HeartbeatStream()
    await call.write(coordinator_pb2.HeartbeatRequest(worker_id="w1", in_flight=4))
    assert await call.read() == coordinator_pb2.HeartbeatResponse()
    assert await pending_for(redis, "w1") == 4

    await channel.close()  # the connection goes, as when the worker's process dies

    async def all_reported() -> list[list[messages_pb2.TaskOutcome]]:
        found = [await outcomes_of(redis, cell) for cell in keys.cells()]
        return found if all(found) else []

    reported = await eventually(all_reported, what="a WorkerLost outcome in every cell")
    for cell, outcomes in zip(keys.cells(), reported, strict=True):
        assert [(o.run_id, o.node_id, o.error.type, o.worker_lost) for o in outcomes] == [
            (runs[cell], f"n{cell}", WORKER_LOST, True)
        ]
        assert "worker w1 was declared dead: connection lost" in outcomes[0].error.message
    assert await pending_for(redis, "w1") == 0

    async def removed() -> bool:
        return await redis.zscore(keys.workers_index(), "w1") is None

    await eventually(removed, what="the dead worker to be removed")
    assert "w1" not in await consumers(redis)
    assert one_slot_scripts.count("settle_reclaim.lua") == 4
    assert "delete_consumer.lua" in one_slot_scripts


async def test_a_deregistered_worker_s_consumers_are_deleted_in_every_cell(
    start_coordinator: StartCoordinator, open_stub, redis: aioredis.Redis, one_slot_scripts: list[str]
) -> None:
    stub = open_stub(await start_coordinator())
    await stub.RegisterWorker(coordinator_pb2.RegisterWorkerRequest(
        worker_id="w1", queues=[QUEUE], task_types=["fetch"], concurrency=1, hostname="h", pid=1))
    for cell in (1, 3):  # the worker read from two cells, and committed what it read
        await enqueue(redis, envelope("a", run_id=new_run_id(cell=cell)))
        [[stream, [(entry_id, _)]]] = await redis.xreadgroup(
            keys.WORKER_GROUP, "w1", {keys.queue_stream(QUEUE, cell): ">"})
        await redis.xack(stream, keys.WORKER_GROUP, entry_id)
    assert "w1" in await consumers(redis)

    await stub.DeregisterWorker(coordinator_pb2.DeregisterWorkerRequest(worker_id="w1"))

    assert "w1" not in await consumers(redis)
    assert await redis.zscore(keys.workers_index(), "w1") is None
    assert await redis.exists(keys.worker_info("w1")) == 0
    assert one_slot_scripts.count("delete_consumer.lua") == 4  # one per cell
    assert "remove_worker.lua" in one_slot_scripts


async def test_the_retry_timer_moves_due_deliveries_in_every_cell_and_wakes_for_any_cell(
    start_coordinator: StartCoordinator, redis: aioredis.Redis, one_slot_scripts: list[str]
) -> None:
    runs = runs_by_cell()

    async def schedule(cell: int, node_id: str) -> None:
        data = envelope(node_id, run_id=runs[cell]).SerializeToString()
        member = keys.retry_head(QUEUE, high=False).encode() + b"\n" + data
        await redis.zadd(keys.retry_timer(cell), {member: 0})  # due at once

    for cell in keys.cells():
        await schedule(cell, f"due{cell}")
    # The timers sleep up to 30 s: what is scheduled later is moved at once only when its cell's
    # wake-up stream wakes its timer.
    await start_coordinator(retry_timer_max_sleep_ms=30_000)

    async def lane(cell: int) -> list[str]:
        entries = await redis.xrange(keys.queue_stream(QUEUE, cell))
        return [messages_pb2.TaskEnvelope.FromString(f[keys.ENVELOPE_FIELD]).node_id for _, f in entries]

    async def moved() -> bool:
        return [await lane(cell) for cell in keys.cells()] == [[f"due{cell}"] for cell in keys.cells()]

    await eventually(moved, what="the due deliveries of every cell in their lanes")
    assert [await redis.zcard(keys.retry_timer(cell)) for cell in keys.cells()] == [0, 0, 0, 0]
    assert one_slot_scripts.count("move_due.lua") >= 4

    await schedule(2, "woken")
    await redis.xadd(keys.retry_wake(2), {b"w": b"1"}, maxlen=1)

    async def woken() -> bool:
        return await lane(2) == ["due2", "woken"]

    await eventually(woken, timeout_s=5, what="cell 2's timer to wake and move the new delivery")


async def dead_letter(redis: aioredis.Redis, cell: int, node_id: str) -> None:
    raw = envelope(node_id, run_id=new_run_id(cell=cell)).SerializeToString()
    letter = make_dead_letter(queue=QUEUE, original_id="1-0", raw=raw, reason="test reason")
    await redis.xadd(keys.dead_letters_stream(cell), {b"d": letter.SerializeToString()})


async def test_dead_letters_of_every_cell_are_paged_each_once_and_replayed_to_their_cell(
    start_coordinator: StartCoordinator, open_stub, redis: aioredis.Redis, one_slot_scripts: list[str]
) -> None:
    stub = open_stub(await start_coordinator())
    for cell in keys.cells():
        for i in range(cell + 1):  # 1, 2, 3 and 4 letters: pages end inside cells and at their ends
            await dead_letter(redis, cell, f"c{cell}-{i}")

    seen: list[messages_pb2.DeadLetter] = []
    after = ""
    while True:
        page = (await stub.ListDeadLetters(
            coordinator_pb2.ListDeadLettersRequest(limit=3, after_id=after))).dead_letters
        if not page:
            break
        seen += page
        after = page[-1].id

    assert [letter.node_id for letter in seen] == [f"c{c}-{i}" for c in keys.cells() for i in range(c + 1)]
    assert all(letter.id.startswith(f"{keys.cell_of(letter.run_id)}-") for letter in seen)
    by_id = (await stub.ListDeadLetters(coordinator_pb2.ListDeadLettersRequest(
        ids=[seen[-1].id, seen[0].id]))).dead_letters
    assert [letter.node_id for letter in by_id] == ["c3-3", "c0-0"]

    # By id: to the letter's cell's lane.
    await stub.ReplayDeadLetters(coordinator_pb2.ReplayDeadLettersRequest(ids=[seen[1].id, seen[-1].id]))
    assert await redis.xlen(keys.queue_stream(QUEUE, 1)) == 1
    assert await redis.xlen(keys.queue_stream(QUEUE, 3)) == 1
    # All, page after page: every other letter once.
    replayed, after = 0, ""
    while True:
        request = coordinator_pb2.ReplayDeadLettersRequest(all=True, after_id=after)
        reply = await stub.ReplayDeadLetters(request)
        replayed += reply.replayed
        after = reply.next_after_id
        if not after:
            break
    assert replayed == 8
    assert [await redis.xlen(keys.queue_stream(QUEUE, cell)) for cell in keys.cells()] == [1, 2, 3, 4]
    assert [await redis.xlen(keys.dead_letters_stream(cell)) for cell in keys.cells()] == [0, 0, 0, 0]
    assert "replay_dead_letters.lua" in one_slot_scripts


@pytest.mark.parametrize(
    "bad", ["1700000000000-0", "4-1700000000000-0", "x-1700000000000-0", "1-", "-1-0", "1-1-0-0"]
)
async def test_a_dead_letter_id_without_a_valid_cell_is_refused(
    start_coordinator: StartCoordinator, open_stub, bad: str
) -> None:
    stub = open_stub(await start_coordinator())

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListDeadLetters(coordinator_pb2.ListDeadLettersRequest(after_id=bad))

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "<cell>-<entry id>" in (caught.value.details() or "")
