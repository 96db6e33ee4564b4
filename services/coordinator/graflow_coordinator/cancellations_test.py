"""NotifyCanceled is deprecated (workers learn of every run's end from the scheduler's gf:ended
stream): v1 callers are still accepted, and nothing is recorded or relayed in heartbeats."""

from graflow_api.v1 import coordinator_pb2 as pb
from graflow_runtime import keys


async def test_notify_canceled_is_accepted_and_heartbeats_relay_nothing(stub, redis):
    await stub.RegisterWorker(pb.RegisterWorkerRequest(worker_id="w1", queues=["default"], pid=1))
    before = set(await redis.keys("*"))
    await stub.NotifyCanceled(pb.NotifyCanceledRequest(run_ids=["run-1", "run-2"]))
    response = await stub.Heartbeat(pb.HeartbeatRequest(worker_id="w1"))
    assert list(response.canceled_run_ids) == []
    assert set(await redis.keys("*")) - before == set()


async def test_a_flood_of_notify_canceled_leaves_heartbeat_answers_empty_and_leases_renewed(stub, redis):
    # The finding: ~500 NotifyCanceled calls within 10 s pushed heartbeat responses past the
    # 64 MiB message limit and workers lost their leases. Each answer must stay the same size.
    await stub.RegisterWorker(pb.RegisterWorkerRequest(worker_id="w1", queues=["default"], pid=1))
    run_ids = [f"{i:026d}" for i in range(1000)]
    for _ in range(500):
        await stub.NotifyCanceled(pb.NotifyCanceledRequest(run_ids=run_ids))
    leased = await redis.zscore(keys.WORKERS_INDEX, "w1")
    assert (await stub.Heartbeat(pb.HeartbeatRequest(worker_id="w1"))).ByteSize() == 0
    call = stub.HeartbeatStream()
    await call.write(pb.HeartbeatRequest(worker_id="w1", in_flight=0))
    assert (await call.read()).ByteSize() == 0
    await call.write(pb.HeartbeatRequest(worker_id="w1", leaving=True))
    await call.done_writing()
    assert await redis.zscore(keys.WORKERS_INDEX, "w1") >= leased
