"""ChannelUpdate (append, prepend, atomic add) and checkpoints, against a real Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis

from graflow_api.v1 import common_pb2, result_store_pb2, result_store_pb2_grpc
from graflow_runtime import keys

from graflow_result_store.app_test import start_app

Op = result_store_pb2.ChannelUpdateRequest
APPEND, PREPEND, ADD = Op.OPERATION_APPEND, Op.OPERATION_PREPEND, Op.OPERATION_ADD


@pytest.fixture
async def rs(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[result_store_pb2_grpc.ResultStoreStub]:
    app, client = await start_app(redis_url, retention_s=3600, max_value_bytes=1024)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        yield result_store_pb2_grpc.ResultStoreStub(channel)
    finally:
        await channel.close()
        await app.stop(0)
        await client.aclose()


def js(value: object) -> common_pb2.Payload:
    return common_pb2.Payload(content_type="application/json", data=json.dumps(value).encode())


async def update(rs, key: str, op: int, value: object, run: str = "r1", ttl_ms: int = 0):
    return await rs.ChannelUpdate(
        result_store_pb2.ChannelUpdateRequest(
            run_id=run, key=key, operation=op, value=js(value), ttl_ms=ttl_ms
        )
    )


async def get(rs, key: str, run: str = "r1") -> object:
    response = await rs.ChannelGet(result_store_pb2.ChannelGetRequest(run_id=run, keys=[key]))
    return json.loads(response.entries[0].value.data) if response.entries else "<absent>"


async def test_append_and_prepend_build_a_list_keeping_values_as_sent(rs):
    await update(rs, "xs", APPEND, {"a": {}})
    await update(rs, "xs", APPEND, [1, 2.5])
    await update(rs, "xs", PREPEND, "first")
    assert await get(rs, "xs") == ["first", {"a": {}}, [1, 2.5]]


async def test_append_extends_a_list_written_with_set(rs):
    await rs.ChannelSet(result_store_pb2.ChannelSetRequest(
        run_id="r1", entries=[result_store_pb2.ChannelEntry(key="xs", value=js([]))]))
    await update(rs, "xs", APPEND, 1)
    await update(rs, "xs", APPEND, 2)
    assert await get(rs, "xs") == [1, 2]


async def test_add_starts_at_zero_and_returns_the_new_value(rs):
    first = await update(rs, "n", ADD, 5)
    second = await update(rs, "n", ADD, -2)
    assert json.loads(first.value.data) == 5
    assert json.loads(second.value.data) == 3
    third = await update(rs, "n", ADD, 0.5)
    assert json.loads(third.value.data) == 3.5
    assert await get(rs, "n") == 3.5


async def test_concurrent_adds_and_appends_lose_nothing(rs):
    await asyncio.gather(*(update(rs, "n", ADD, 1) for _ in range(50)),
                         *(update(rs, "xs", APPEND, i) for i in range(50)))
    assert await get(rs, "n") == 50
    assert sorted(await get(rs, "xs")) == list(range(50))


@pytest.mark.parametrize(("stored", "op", "message"), [
    ({"a": 1}, APPEND, "does not hold a JSON list"),
    ("text", PREPEND, "does not hold a JSON list"),
    ([1], ADD, "does not hold a JSON number"),
])
async def test_update_of_a_value_of_another_shape_is_refused_and_keeps_it(rs, stored, op, message):
    await rs.ChannelSet(result_store_pb2.ChannelSetRequest(
        run_id="r1", entries=[result_store_pb2.ChannelEntry(key="k", value=js(stored))]))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await update(rs, "k", op, 1)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert message in info.value.details()
    assert await get(rs, "k") == stored


async def test_add_of_something_not_a_number_is_invalid(rs):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await update(rs, "n", ADD, "1")
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert await get(rs, "n") == "<absent>"


async def test_an_expired_key_starts_over(rs, redis):
    await update(rs, "xs", APPEND, 1, ttl_ms=1)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while await get(rs, "xs") != "<absent>" and loop.time() < deadline:
        await asyncio.sleep(0.01)
    await update(rs, "xs", APPEND, 2)
    assert await get(rs, "xs") == [2]


async def test_checkpoints_per_node_last_put_wins_and_expire_with_the_run(rs, redis):
    missing = await rs.GetCheckpoint(result_store_pb2.GetCheckpointRequest(run_id="r1", node_id="a"))
    assert not missing.found
    for step in (1, 2):
        await rs.PutCheckpoint(
            result_store_pb2.PutCheckpointRequest(run_id="r1", node_id="a", value=js({"step": step}))
        )
    got = await rs.GetCheckpoint(result_store_pb2.GetCheckpointRequest(run_id="r1", node_id="a"))
    assert got.found and json.loads(got.value.data) == {"step": 2}
    other = await rs.GetCheckpoint(result_store_pb2.GetCheckpointRequest(run_id="r1", node_id="b"))
    assert not other.found
    assert 0 < await redis.ttl(keys.checkpoints("r1")) <= 3600


async def test_checkpoint_needs_a_node_and_fits_the_size_limit(rs):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rs.PutCheckpoint(result_store_pb2.PutCheckpointRequest(run_id="r1", value=js(1)))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rs.PutCheckpoint(
            result_store_pb2.PutCheckpointRequest(run_id="r1", node_id="a", value=js("x" * 2000))
        )
    assert "over the limit" in info.value.details()
