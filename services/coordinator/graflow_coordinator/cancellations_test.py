"""Canceled runs reported by the scheduler reach every worker through heartbeat responses."""

import grpc
import pytest

from graflow_api.v1 import coordinator_pb2 as pb
from graflow_runtime import keys


async def register(stub, worker_id: str) -> None:  # type: ignore[no-untyped-def]
    await stub.RegisterWorker(pb.RegisterWorkerRequest(worker_id=worker_id, queues=["default"], pid=1))


async def test_every_worker_hears_of_a_canceled_run_in_its_heartbeats(stub):
    await register(stub, "w1")
    await register(stub, "w2")
    assert list((await stub.Heartbeat(pb.HeartbeatRequest(worker_id="w1"))).canceled_run_ids) == []
    await stub.NotifyCanceled(pb.NotifyCanceledRequest(run_ids=["run-1", "run-2"]))
    for worker in ("w1", "w2", "w1"):
        response = await stub.Heartbeat(pb.HeartbeatRequest(worker_id=worker))
        assert sorted(response.canceled_run_ids) == ["run-1", "run-2"]


async def test_cancellations_older_than_the_window_are_no_longer_listed_and_are_pruned(
    start_coordinator, open_stub, redis
):
    stub = open_stub(await start_coordinator(canceled_window_ms=1))
    await register(stub, "w1")
    await redis.zadd(keys.CANCELED_RUNS, {"old-run": 1})
    await stub.NotifyCanceled(pb.NotifyCanceledRequest(run_ids=["new-run"]))
    assert await redis.zscore(keys.CANCELED_RUNS, "old-run") is None
    response = await stub.Heartbeat(pb.HeartbeatRequest(worker_id="w1"))
    assert "old-run" not in response.canceled_run_ids


async def test_a_malformed_run_id_is_rejected(stub):
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.NotifyCanceled(pb.NotifyCanceledRequest(run_ids=["has space"]))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
