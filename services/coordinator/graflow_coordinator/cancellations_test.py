"""NotifyCanceled is deprecated (workers learn of every run's end from the scheduler's gf:ended
stream): v1 callers are still accepted, and nothing is recorded or relayed in heartbeats."""

from graflow_api.v1 import coordinator_pb2 as pb


async def test_notify_canceled_is_accepted_and_heartbeats_relay_nothing(stub, redis):
    await stub.RegisterWorker(pb.RegisterWorkerRequest(worker_id="w1", queues=["default"], pid=1))
    before = set(await redis.keys("*"))
    await stub.NotifyCanceled(pb.NotifyCanceledRequest(run_ids=["run-1", "run-2"]))
    response = await stub.Heartbeat(pb.HeartbeatRequest(worker_id="w1"))
    assert list(response.canceled_run_ids) == []
    assert set(await redis.keys("*")) - before == set()
