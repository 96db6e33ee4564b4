"""ChannelUpdate (append, prepend, atomic add) and checkpoints, against a real Redis."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from graflow_api.v1 import common_pb2, result_store_pb2, result_store_pb2_grpc
from graflow_runtime import keys
from graflow_runtime.limits import MAX_CHANNEL_KEYS

from graflow_result_store.conftest import RUN_1, start_app

Op = result_store_pb2.ChannelUpdateRequest
APPEND, PREPEND, ADD = Op.OPERATION_APPEND, Op.OPERATION_PREPEND, Op.OPERATION_ADD



def js(value: object) -> common_pb2.Payload:
    return common_pb2.Payload(content_type="application/json", data=json.dumps(value).encode())


async def update(stub, key: str, op: int, value: object, run: str = RUN_1, ttl_ms: int = 0):
    return await stub.ChannelUpdate(
        result_store_pb2.ChannelUpdateRequest(
            run_id=run, key=key, operation=op, value=js(value), ttl_ms=ttl_ms
        )
    )


async def get(stub, key: str, run: str = RUN_1) -> object:
    response = await stub.ChannelGet(result_store_pb2.ChannelGetRequest(run_id=run, keys=[key]))
    return json.loads(response.entries[0].value.data) if response.entries else "<absent>"


async def test_append_and_prepend_build_a_list_keeping_values_as_sent(stub):
    await update(stub, "xs", APPEND, {"a": {}})
    await update(stub, "xs", APPEND, [1, 2.5])
    await update(stub, "xs", PREPEND, "first")
    assert await get(stub, "xs") == ["first", {"a": {}}, [1, 2.5]]


async def test_append_extends_a_list_written_with_set(stub):
    await stub.ChannelSet(result_store_pb2.ChannelSetRequest(
        run_id=RUN_1, entries=[result_store_pb2.ChannelEntry(key="xs", value=js([]))]))
    await update(stub, "xs", APPEND, 1)
    await update(stub, "xs", APPEND, 2)
    assert await get(stub, "xs") == [1, 2]


async def test_add_starts_at_zero_and_returns_the_new_value(stub):
    first = await update(stub, "n", ADD, 5)
    second = await update(stub, "n", ADD, -2)
    assert json.loads(first.value.data) == 5
    assert json.loads(second.value.data) == 3
    third = await update(stub, "n", ADD, 0.5)
    assert json.loads(third.value.data) == 3.5
    assert await get(stub, "n") == 3.5


async def test_concurrent_adds_and_appends_lose_nothing(stub):
    await asyncio.gather(*(update(stub, "n", ADD, 1) for _ in range(50)),
                         *(update(stub, "xs", APPEND, i) for i in range(50)))
    assert await get(stub, "n") == 50
    assert sorted(await get(stub, "xs")) == list(range(50))


@pytest.mark.parametrize(("stored", "op", "message"), [
    ({"a": 1}, APPEND, "does not hold a JSON list"),
    ("text", PREPEND, "does not hold a JSON list"),
    ([1], ADD, "does not hold a JSON number"),
])
async def test_update_of_a_value_of_another_shape_is_refused_and_keeps_it(stub, stored, op, message):
    await stub.ChannelSet(result_store_pb2.ChannelSetRequest(
        run_id=RUN_1, entries=[result_store_pb2.ChannelEntry(key="k", value=js(stored))]))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await update(stub, "k", op, 1)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert message in info.value.details()
    assert await get(stub, "k") == stored


async def test_add_of_something_not_a_number_is_invalid(stub):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await update(stub, "n", ADD, "1")
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert await get(stub, "n") == "<absent>"


async def test_an_expired_key_starts_over(stub, redis):
    await update(stub, "xs", APPEND, 1, ttl_ms=1)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while await get(stub, "xs") != "<absent>" and loop.time() < deadline:
        await asyncio.sleep(0.01)
    await update(stub, "xs", APPEND, 2)
    assert await get(stub, "xs") == [2]


async def test_checkpoints_per_node_last_put_wins_and_expire_with_the_run(stub, redis):
    missing = await stub.GetCheckpoint(result_store_pb2.GetCheckpointRequest(run_id=RUN_1, node_id="a"))
    assert not missing.found
    for step in (1, 2):
        await stub.PutCheckpoint(
            result_store_pb2.PutCheckpointRequest(run_id=RUN_1, node_id="a", value=js({"step": step}))
        )
    got = await stub.GetCheckpoint(result_store_pb2.GetCheckpointRequest(run_id=RUN_1, node_id="a"))
    assert got.found and json.loads(got.value.data) == {"step": 2}
    other = await stub.GetCheckpoint(result_store_pb2.GetCheckpointRequest(run_id=RUN_1, node_id="b"))
    assert not other.found
    assert 0 < await redis.ttl(keys.checkpoints(RUN_1)) <= 3600


async def test_checkpoint_needs_a_node_and_fits_the_size_limit(stub):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.PutCheckpoint(result_store_pb2.PutCheckpointRequest(run_id=RUN_1, value=js(1)))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.PutCheckpoint(
            result_store_pb2.PutCheckpointRequest(run_id=RUN_1, node_id="a", value=js("x" * 2000))
        )
    assert "over the limit" in info.value.details()


@pytest.mark.parametrize(("data", "message"), [
    (b"1e400", "not a finite number"),
    (b"NaN", "not valid JSON"),
    (b"[-Infinity]", "not valid JSON"),
    (b"[" * 65 + b"]" * 65, "nested deeper than"),
])
async def test_update_with_a_non_finite_or_too_deep_value_is_invalid_and_stores_nothing(
    stub, redis, data, message
):
    for op in (APPEND, ADD):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ChannelUpdate(result_store_pb2.ChannelUpdateRequest(
                run_id=RUN_1, key="k", operation=op,
                value=common_pb2.Payload(content_type="application/json", data=data)))
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert message in info.value.details()
    assert await redis.keys("*") == []


async def test_update_with_json_nested_100_000_deep_is_invalid_and_stores_nothing(redis, redis_url):
    app = await start_app(redis_url, max_value_bytes=1024 * 1024)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await result_store_pb2_grpc.ResultStoreStub(channel).ChannelUpdate(
                    result_store_pb2.ChannelUpdateRequest(
                        run_id=RUN_1, key="k", operation=APPEND,
                        value=common_pb2.Payload(data=b"[" * 100_000 + b"]" * 100_000)))
    finally:
        await app.stop(0)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "nested deeper than 64 levels" in info.value.details()
    assert await redis.keys("*") == []


async def test_a_list_that_an_append_would_take_over_the_value_limit_is_refused_and_kept(stub):
    # The stub's MAX_VALUE_BYTES is 1 KiB. Appends used to grow a list without a bound, each
    # copying it whole.
    item = "x" * 250
    for _ in range(4):
        await update(stub, "xs", APPEND, item)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await update(stub, "xs", APPEND, item)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "key 'xs'" in info.value.details() and "1024 bytes" in info.value.details()
    assert "MAX_VALUE_BYTES" in info.value.details()
    assert await get(stub, "xs") == [item] * 4
    with pytest.raises(grpc.aio.AioRpcError):
        await update(stub, "xs", PREPEND, item)
    assert await get(stub, "xs") == [item] * 4


def entries(*names: str) -> list[result_store_pb2.ChannelEntry]:
    return [result_store_pb2.ChannelEntry(key=name, value=js(1)) for name in names]


async def channel_set(stub, *names: str) -> None:
    await stub.ChannelSet(result_store_pb2.ChannelSetRequest(run_id=RUN_1, entries=entries(*names)))


async def test_a_runs_channel_keys_are_capped_and_a_request_naming_too_many_is_invalid(stub, redis):
    # A run's channel hash grew with every new key, and ChannelKeys answered them all.
    filler = [f"k{i}" for i in range(MAX_CHANNEL_KEYS - 1)]
    for start in range(0, len(filler), 1000):
        await channel_set(stub, *filler[start : start + 1000])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel_set(stub, "new1", "new2")
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"MAX_CHANNEL_KEYS is {MAX_CHANNEL_KEYS:,}" in info.value.details()
    assert not await redis.hexists(keys.channel(RUN_1), "new1")
    await channel_set(stub, "k1", "last")
    with pytest.raises(grpc.aio.AioRpcError) as update_info:
        await update(stub, "one-more", APPEND, 1)
    assert update_info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await update(stub, "last", ADD, 1)  # existing keys still change
    listed = await stub.ChannelKeys(result_store_pb2.ChannelKeysRequest(run_id=RUN_1))
    assert len(listed.keys) == MAX_CHANNEL_KEYS
    too_many = [f"x{i}" for i in range(MAX_CHANNEL_KEYS + 1)]
    calls = (
        stub.ChannelGet(result_store_pb2.ChannelGetRequest(run_id=RUN_1, keys=too_many)),
        stub.ChannelDelete(result_store_pb2.ChannelDeleteRequest(run_id=RUN_1, keys=too_many)),
    )
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as many:
            await call
        assert many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"{MAX_CHANNEL_KEYS + 1:,} keys" in many.value.details()
