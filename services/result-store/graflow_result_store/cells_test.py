"""The result-store with the key layout of four cells (docs/architecture.md, "Redis Cluster:
cells") on one real Redis, which names exactly the keys a cluster would: a batch of results of runs
in several cells is one script call per cell, each in one hash slot (the ``one_slot_scripts``
fixture fails a test at a call that spans slots), and every answer is as with one cell."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from graflow_api.v1 import result_store_pb2, result_store_pb2_grpc
from graflow_runtime import keys
from graflow_runtime.runids import new_run_id

from graflow_result_store.app_test import DUPLICATE, STALE, STORED, put, result, values


@pytest.fixture
def cells_stub(
    four_cells: keys.Layout, stub: result_store_pb2_grpc.ResultStoreStub
) -> result_store_pb2_grpc.ResultStoreStub:
    """The served result-store (``stub``), started after the layout is set to four cells."""
    return stub


async def test_a_batch_spanning_cells_is_one_call_per_cell_and_answers_in_request_order(
    cells_stub: result_store_pb2_grpc.ResultStoreStub, redis: aioredis.Redis, one_slot_scripts: list[str]
) -> None:
    runs = [new_run_id(cell=cell) for cell in keys.cells()]
    await put(cells_stub, result("a", 2, "old", run=runs[2]))
    one_slot_scripts.clear()
    batch = [result("a", 1, f"{cell}", run=run) for cell, run in enumerate(runs)]  # one of each cell
    batch += [result("a", 1, "again", run=runs[1]), result("b", 1, "b3", run=runs[3])]

    dispositions = await put(cells_stub, *batch)

    assert dispositions == [STORED, STORED, STALE, STORED, DUPLICATE, STORED]
    assert one_slot_scripts == ["put_results.lua"] * 4
    for cell, run in enumerate(runs):
        assert await values(cells_stub, run, "a") == {"a": b"old" if cell == 2 else f"{cell}".encode()}
        assert await redis.exists(keys.results(run)) == 1  # under the run's cell's tag
    assert await values(cells_stub, runs[3], "b") == {"b": b"b3"}


async def test_channels_and_checkpoints_of_a_run_stay_in_its_cell(
    cells_stub: result_store_pb2_grpc.ResultStoreStub, redis: aioredis.Redis, one_slot_scripts: list[str]
) -> None:
    run = new_run_id(cell=3)
    await cells_stub.ChannelSet(result_store_pb2.ChannelSetRequest(
        run_id=run, entries=[result_store_pb2.ChannelEntry(key="k", value=result("x", 1, 7).value)]))
    reply = await cells_stub.ChannelGet(result_store_pb2.ChannelGetRequest(run_id=run, keys=["k"]))

    assert [entry.value.data for entry in reply.entries] == [b"7"]
    assert "channel_set.lua" in one_slot_scripts and "channel_get.lua" in one_slot_scripts
    assert await redis.exists(keys.channel(run)) == 1
    assert keys.channel(run).startswith(f"{keys.layout().prefixes[3]}:")
