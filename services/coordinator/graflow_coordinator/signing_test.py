"""Integrity on the bus, the coordinator's part: what it appends is signed (Dispatch, the retry
timer's moves, lost attempts' outcomes), and it never lends its key to a forged message (reclaim,
replay)."""

from __future__ import annotations

import secrets

import grpc
import pytest
import redis.asyncio as aioredis

from graflow_api.v1 import coordinator_pb2, coordinator_pb2_grpc, messages_pb2
from graflow_runtime import keys
from graflow_runtime.signing import KEY_ID_FIELD, BusKeys, Kind

from graflow_coordinator.conftest import StartCoordinator, delivery, envelope, eventually
from graflow_coordinator.deadletters import make_dead_letter
from graflow_coordinator.reclaim import Reclaimer

OLD = f"old:{secrets.token_hex(32)}"
NEW = f"new:{secrets.token_hex(32)}"
OLD_KEYS = BusKeys.from_settings([OLD], "old")
BOTH_KEYS = BusKeys.from_settings([OLD, NEW], "new")
STREAM = keys.queue_stream("default")


async def queue_entries(redis: aioredis.Redis) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in await redis.xrange(STREAM)]


async def signed_dead_letter(
    redis: aioredis.Redis, node_id: str, bus_keys: BusKeys, *, tamper: bool = False
) -> str:
    """A dead letter as a worker writes it: the message and, beside it, the signature it carried."""
    raw = envelope(node_id).SerializeToString()
    signature = bus_keys.sign_fields(Kind.ENVELOPE, raw)
    if tamper:
        raw = envelope(node_id, task_type="rm_rf").SerializeToString()
    letter = make_dead_letter(queue="default", original_id="1-0", raw=raw, reason="undecodable: test")
    entry_id = await redis.xadd(keys.DEAD_LETTERS_STREAM, {b"d": letter.SerializeToString(), **signature})
    return entry_id.decode()


@pytest.fixture
async def signing_stub(
    start_coordinator: StartCoordinator, open_stub
) -> coordinator_pb2_grpc.CoordinatorStub:
    """A coordinator holding the old and the new key, signing with the new one (mid-rotation)."""
    return open_stub(await start_coordinator(signing_keys=[OLD, NEW], signing_key_id="new"))


async def test_dispatch_and_the_retry_timer_append_signed_envelopes(
    signing_stub, redis: aioredis.Redis
) -> None:
    await signing_stub.Dispatch(coordinator_pb2.DispatchRequest(
        deliveries=[delivery("now"), delivery("later", delay_ms=50)]))

    entries = await eventually(
        lambda: _two(queue_entries(redis)), what="the delayed delivery moved by the timer")
    for fields in entries:
        assert fields[KEY_ID_FIELD] == b"new"
        assert BOTH_KEYS.fields_problem(Kind.ENVELOPE, fields[keys.ENVELOPE_FIELD], fields) is None
    nodes = [messages_pb2.TaskEnvelope.FromString(f[keys.ENVELOPE_FIELD]).node_id for f in entries]
    assert nodes == ["now", "later"]


async def test_a_delayed_high_lane_delivery_keeps_its_lane_and_its_signature(
    signing_stub, redis: aioredis.Redis
) -> None:
    await signing_stub.Dispatch(coordinator_pb2.DispatchRequest(
        deliveries=[delivery("lost", delay_ms=50, replaces_lost_attempt=True)]))
    [(member, _)] = await redis.zrange(keys.RETRY_TIMER, 0, -1, withscores=True)
    assert member.split(b"\n", 1)[0].split()[:2] == [b"default", b"high"]

    high = keys.queue_high_stream("default")
    [(_, fields)] = await eventually(lambda: redis.xrange(high), what="the delayed delivery in the high lane")
    assert BOTH_KEYS.fields_problem(Kind.ENVELOPE, fields[keys.ENVELOPE_FIELD], fields) is None
    assert await redis.xlen(STREAM) == 0


async def _two(entries):  # eventually() wants an awaitable that is truthy when done
    found = await entries
    return found if len(found) == 2 else None


async def test_a_replayed_dead_letter_keeps_its_signature_and_one_of_the_old_key_replays_mid_rotation(
    signing_stub, redis: aioredis.Redis
) -> None:
    by_new = await signed_dead_letter(redis, "a", BOTH_KEYS)
    by_old = await signed_dead_letter(redis, "b", OLD_KEYS)

    request = coordinator_pb2.ReplayDeadLettersRequest(ids=[by_new, by_old])
    reply = await signing_stub.ReplayDeadLetters(request)

    assert reply.replayed == 2
    entries = await queue_entries(redis)
    assert [f[KEY_ID_FIELD] for f in entries] == [b"new", b"old"]
    assert all(BOTH_KEYS.fields_problem(Kind.ENVELOPE, f[keys.ENVELOPE_FIELD], f) is None for f in entries)


async def test_a_tampered_or_unsigned_dead_letter_is_never_replayed(
    signing_stub, redis: aioredis.Redis
) -> None:
    tampered = await signed_dead_letter(redis, "a", BOTH_KEYS, tamper=True)
    unsigned = await signed_dead_letter(redis, "b", BusKeys())

    cases = ((tampered, "BadSignature: the HMAC"), (unsigned, "BadSignature: the message is not"))
    for letter_id, why in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await signing_stub.ReplayDeadLetters(coordinator_pb2.ReplayDeadLettersRequest(ids=[letter_id]))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert why in refused.value.details() and letter_id in refused.value.details()

    everything = await signing_stub.ReplayDeadLetters(coordinator_pb2.ReplayDeadLettersRequest(all=True))
    assert (everything.replayed, everything.left_in_place) == (0, 2)
    assert await redis.xlen(STREAM) == 0
    assert await redis.xlen(keys.DEAD_LETTERS_STREAM) == 2  # left in place


async def test_a_reclaimed_forged_envelope_is_dead_lettered_and_a_lost_attempt_is_reported_signed(
    redis: aioredis.Redis,
) -> None:
    reclaimer = Reclaimer(redis, max_deliveries=5, dead_letter_maxlen=100, bus_keys=BOTH_KEYS)
    await redis.xgroup_create(STREAM, keys.WORKER_GROUP, id="0", mkstream=True)
    real = envelope("real").SerializeToString()
    await redis.xadd(STREAM, {keys.ENVELOPE_FIELD: real, **OLD_KEYS.sign_fields(Kind.ENVELOPE, real)})
    forged_id = await redis.xadd(STREAM, {keys.ENVELOPE_FIELD: envelope("forged").SerializeToString()})
    await redis.xreadgroup(keys.WORKER_GROUP, "w1", {STREAM: ">"}, count=10)

    stats = await reclaimer.reclaim_consumer("default", "w1", why="was declared dead")

    assert (stats.lost, stats.undecodable) == (1, 1)
    [(_, fields)] = await redis.xrange(keys.OUTCOMES_STREAM)
    outcome = messages_pb2.TaskOutcome.FromString(fields[keys.OUTCOME_FIELD])
    assert (outcome.node_id, outcome.error.type) == ("real", "WorkerLost")
    assert fields[KEY_ID_FIELD] == b"new"
    assert BOTH_KEYS.fields_problem(Kind.OUTCOME, fields[keys.OUTCOME_FIELD], fields) is None
    [(_, dead)] = await redis.xrange(keys.DEAD_LETTERS_STREAM)
    letter = messages_pb2.DeadLetter.FromString(dead[b"d"])
    assert letter.original_id == forged_id.decode()
    assert letter.reason.startswith("BadSignature: the message is not signed")
