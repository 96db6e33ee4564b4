from __future__ import annotations

import grpc
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from graflow_api.v1 import coordinator_pb2, coordinator_pb2_grpc, messages_pb2
from graflow_runtime import keys
from graflow_runtime.grpc_options import CHANNEL_OPTIONS
from graflow_runtime.limits import DEAD_LETTERS_PAGE_MAX

from graflow_coordinator.app import CoordinatorApp
from graflow_coordinator.conftest import envelope, stream_envelopes
from graflow_coordinator.deadletters import PAGE_BYTES, make_dead_letter


async def dead_letter(
    redis: aioredis.Redis, node_id: str, *, queue: str = "default", priority: int = 0
) -> str:
    """Append a dead letter the way any process does (a worker with an undecodable message, ...)."""
    raw = envelope(node_id, priority=priority).SerializeToString()
    letter = make_dead_letter(queue=queue, original_id="1-0", raw=raw, reason="test reason")
    entry_id = await redis.xadd(keys.DEAD_LETTERS_STREAM, {b"d": letter.SerializeToString()})
    return entry_id.decode()


async def test_dead_letters_are_listed_oldest_first_with_their_ids(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    ids = [await dead_letter(redis, f"n{i}") for i in range(3)]

    listed = (await stub.ListDeadLetters(coordinator_pb2.ListDeadLettersRequest())).dead_letters

    assert [letter.id for letter in listed] == ids
    assert [letter.node_id for letter in listed] == ["n0", "n1", "n2"]
    assert listed[0].reason == "test reason"
    assert (listed[0].run_id, listed[0].attempt, listed[0].queue) == ("run-1", 1, "default")


async def test_dead_letters_are_paged_with_an_exclusive_after_id(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    ids = [await dead_letter(redis, f"n{i}") for i in range(5)]

    first = (await stub.ListDeadLetters(coordinator_pb2.ListDeadLettersRequest(limit=2))).dead_letters
    second = (
        await stub.ListDeadLetters(coordinator_pb2.ListDeadLettersRequest(limit=2, after_id=first[-1].id))
    ).dead_letters

    assert [x.id for x in first] == ids[:2]
    assert [x.id for x in second] == ids[2:4]


@pytest.mark.parametrize("after_id", ["18446744073709551615-18446744073709551615", "18446744073709551615"])
async def test_listing_after_the_last_possible_id_is_an_empty_page(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis, after_id: str
) -> None:
    """Found by fuzzing: Redis refuses an exclusive start after the last possible id, which answered
    UNKNOWN; nothing can come after it, so the page is empty."""
    await dead_letter(redis, "a")

    listed = await stub.ListDeadLetters(coordinator_pb2.ListDeadLettersRequest(after_id=after_id))

    assert list(listed.dead_letters) == []


async def test_a_page_of_large_dead_letters_stays_under_the_message_limit_and_paging_reaches_all(
    coordinator: CoordinatorApp, redis: aioredis.Redis
) -> None:
    """A page was bounded by its count only: 70 dead letters of 1 MiB (a node's arguments may be
    1 MiB) made the default page of 100 larger than the 64 MiB message limit, and every listing
    from there answered RESOURCE_EXHAUSTED (the fuzzing saw it with a client's 4 MiB limit)."""
    big = envelope("big")
    big.args_json = b'{"blob": "' + b"x" * (1024 * 1024) + b'"}'
    letter = make_dead_letter(queue="default", original_id="1-0", raw=big.SerializeToString(), reason="r")
    ids = [(await redis.xadd(keys.DEAD_LETTERS_STREAM, {b"d": letter.SerializeToString()})).decode()
           for _ in range(70)]

    async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}", options=CHANNEL_OPTIONS) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        listed: list[str] = []
        after = ""
        while page := (await stub.ListDeadLetters(coordinator_pb2.ListDeadLettersRequest(after_id=after))):
            if not page.dead_letters:
                break
            assert page.ByteSize() <= PAGE_BYTES
            listed += [x.id for x in page.dead_letters]
            after = listed[-1]

    assert listed == ids


async def test_dead_letters_are_shown_by_id_leaving_out_unknown_ids(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    ids = [await dead_letter(redis, f"n{i}") for i in range(3)]

    shown = (
        await stub.ListDeadLetters(coordinator_pb2.ListDeadLettersRequest(ids=[ids[2], "1-1", ids[0]]))
    ).dead_letters

    assert [(x.id, x.node_id) for x in shown] == [(ids[2], "n2"), (ids[0], "n0")]


async def test_a_malformed_after_id_is_invalid_argument(stub: coordinator_pb2_grpc.CoordinatorStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListDeadLetters(coordinator_pb2.ListDeadLettersRequest(after_id="yesterday"))

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "after_id" in caught.value.details()


async def test_replaying_a_dead_letter_puts_it_back_on_its_queue_and_removes_it(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    keep = await dead_letter(redis, "keep")
    replay = await dead_letter(redis, "again", queue="other")

    reply = await stub.ReplayDeadLetters(coordinator_pb2.ReplayDeadLettersRequest(ids=[replay]))

    assert reply.replayed == 1
    assert [e.node_id for e in await stream_envelopes(redis, "other")] == ["again"]
    read = await redis.xreadgroup(keys.WORKER_GROUP, "w1", {keys.queue_stream("other"): ">"}, count=10)
    assert len(read[0][1]) == 1  # the queue's group exists and hands it out
    listed = (await stub.ListDeadLetters(coordinator_pb2.ListDeadLettersRequest())).dead_letters
    assert [x.id for x in listed] == [keep]


async def test_a_replay_appends_to_the_lane_the_envelopes_priority_selects(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    urgent = await dead_letter(redis, "urgent", priority=3)
    plain = await dead_letter(redis, "plain")

    reply = await stub.ReplayDeadLetters(coordinator_pb2.ReplayDeadLettersRequest(ids=[urgent, plain]))

    assert reply.replayed == 2
    assert [e.node_id for e in await stream_envelopes(redis, high=True)] == ["urgent"]
    assert [e.node_id for e in await stream_envelopes(redis)] == ["plain"]


async def test_replaying_all_empties_the_dead_letters(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    for i in range(4):
        await dead_letter(redis, f"n{i}")

    reply = await stub.ReplayDeadLetters(coordinator_pb2.ReplayDeadLettersRequest(all=True))

    assert reply.replayed == 4
    assert [e.node_id for e in await stream_envelopes(redis)] == ["n0", "n1", "n2", "n3"]
    assert await redis.xlen(keys.DEAD_LETTERS_STREAM) == 0


async def many_dead_letters(redis: aioredis.Redis, count: int, *, queue: str = "default") -> list[str]:
    """``count`` dead letters of nodes ``n0``... (in one round trip); their ids, oldest first."""
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(count):
            raw = envelope(f"n{i}").SerializeToString()
            letter = make_dead_letter(queue=queue, original_id="1-0", raw=raw, reason="test reason")
            pipe.xadd(keys.DEAD_LETTERS_STREAM, {b"d": letter.SerializeToString()})
        return [entry_id.decode() for entry_id in await pipe.execute()]


async def test_replaying_all_answers_a_page_at_a_time_and_the_cursor_reaches_every_letter(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    """Found by fuzzing: one call with `all` replayed every dead letter there was (tens of thousands
    took over 10 s). A call examines at most a page and answers where to continue."""
    ids = await many_dead_letters(redis, DEAD_LETTERS_PAGE_MAX + 5)

    first = await stub.ReplayDeadLetters(coordinator_pb2.ReplayDeadLettersRequest(all=True))

    assert (first.replayed, first.left_in_place) == (DEAD_LETTERS_PAGE_MAX, 0)
    assert first.next_after_id == ids[DEAD_LETTERS_PAGE_MAX - 1]
    assert await redis.xlen(keys.DEAD_LETTERS_STREAM) == 5

    rest = await stub.ReplayDeadLetters(
        coordinator_pb2.ReplayDeadLettersRequest(all=True, after_id=first.next_after_id)
    )

    assert (rest.replayed, rest.left_in_place, rest.next_after_id) == (5, 0, "")
    assert await redis.xlen(keys.DEAD_LETTERS_STREAM) == 0
    assert [e.node_id for e in await stream_envelopes(redis)] == [f"n{i}" for i in range(len(ids))]


async def test_replaying_all_leaves_unreplayable_letters_in_place_counts_them_and_passes_them(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    """A page of letters that cannot be replayed (no queue) is examined, counted and passed by the
    cursor, so the replayable letter after them is reached; one warning per call names them."""
    stuck = messages_pb2.DeadLetter(reason="no queue", raw=b"x").SerializeToString()
    async with redis.pipeline(transaction=False) as pipe:
        for _ in range(DEAD_LETTERS_PAGE_MAX):
            pipe.xadd(keys.DEAD_LETTERS_STREAM, {b"d": stuck})
        stuck_ids = [entry_id.decode() for entry_id in await pipe.execute()]
    await dead_letter(redis, "after")

    with capture_logs() as logs:
        first = await stub.ReplayDeadLetters(coordinator_pb2.ReplayDeadLettersRequest(all=True))

    assert (first.replayed, first.left_in_place) == (0, DEAD_LETTERS_PAGE_MAX)
    assert first.next_after_id == stuck_ids[-1]
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["left_in_place"] == DEAD_LETTERS_PAGE_MAX
    assert warnings[0]["dead_letter_ids"][0] == stuck_ids[0]

    rest = await stub.ReplayDeadLetters(
        coordinator_pb2.ReplayDeadLettersRequest(all=True, after_id=first.next_after_id)
    )

    assert (rest.replayed, rest.left_in_place, rest.next_after_id) == (1, 0, "")
    assert [e.node_id for e in await stream_envelopes(redis)] == ["after"]
    assert await redis.xlen(keys.DEAD_LETTERS_STREAM) == DEAD_LETTERS_PAGE_MAX


async def test_replaying_all_after_the_last_possible_id_replays_nothing_and_ends(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    await dead_letter(redis, "a")

    reply = await stub.ReplayDeadLetters(
        coordinator_pb2.ReplayDeadLettersRequest(all=True, after_id=f"{2**64 - 1}-{2**64 - 1}")
    )

    assert (reply.replayed, reply.left_in_place, reply.next_after_id) == (0, 0, "")
    assert await redis.xlen(keys.DEAD_LETTERS_STREAM) == 1


async def test_replaying_unknown_ids_is_not_found_naming_them_and_replays_nothing(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    real = await dead_letter(redis, "a")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ReplayDeadLetters(coordinator_pb2.ReplayDeadLettersRequest(ids=[real, "1-1"]))

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "1-1" in caught.value.details() and real not in caught.value.details()
    assert await redis.xlen(keys.DEAD_LETTERS_STREAM) == 1
    assert await redis.xlen(keys.queue_stream("default")) == 0


async def test_replay_without_ids_or_all_is_invalid_argument(
    stub: coordinator_pb2_grpc.CoordinatorStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ReplayDeadLetters(coordinator_pb2.ReplayDeadLettersRequest())

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'ids'" in caught.value.details() and "'all'" in caught.value.details()


async def test_a_dead_letter_without_a_queue_cannot_be_replayed(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    letter = messages_pb2.DeadLetter(reason="no queue", raw=b"x")
    entry_id = (await redis.xadd(keys.DEAD_LETTERS_STREAM, {b"d": letter.SerializeToString()})).decode()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ReplayDeadLetters(coordinator_pb2.ReplayDeadLettersRequest(ids=[entry_id]))

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert entry_id in caught.value.details()
    assert await redis.xlen(keys.DEAD_LETTERS_STREAM) == 1


@pytest.mark.parametrize(
    "bad", ["1-0\n", " 1-0", "1-0 ", "1-", "-1", "1-0-0", "18446744073709551616-0", "١-0"]
)
async def test_a_malformed_dead_letter_id_is_invalid_argument_and_changes_nothing(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis, bad: str
) -> None:
    real = await dead_letter(redis, "a")
    replay_after = coordinator_pb2.ReplayDeadLettersRequest(all=True, after_id=bad)
    calls = (
        ("ids", stub.ReplayDeadLetters(coordinator_pb2.ReplayDeadLettersRequest(ids=[real, bad]))),
        ("ids", stub.ListDeadLetters(coordinator_pb2.ListDeadLettersRequest(ids=[bad]))),
        ("after_id", stub.ListDeadLetters(coordinator_pb2.ListDeadLettersRequest(after_id=bad))),
        ("after_id", stub.ReplayDeadLetters(replay_after)),
    )
    for field, call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert field in caught.value.details() and "<ms>-<seq>" in caught.value.details()
    assert await redis.xlen(keys.DEAD_LETTERS_STREAM) == 1
    assert await redis.xlen(keys.queue_stream("default")) == 0


async def test_a_replay_of_more_ids_than_the_limit_is_invalid_argument_naming_it(
    stub: coordinator_pb2_grpc.CoordinatorStub, redis: aioredis.Redis
) -> None:
    real = await dead_letter(redis, "a")
    ids = [real, *(f"1-{i}" for i in range(DEAD_LETTERS_PAGE_MAX))]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ReplayDeadLetters(coordinator_pb2.ReplayDeadLettersRequest(ids=ids))

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"ids: {DEAD_LETTERS_PAGE_MAX + 1} ids" in caught.value.details()
    assert f"at most {DEAD_LETTERS_PAGE_MAX}" in caught.value.details()
    assert await redis.xlen(keys.DEAD_LETTERS_STREAM) == 1
