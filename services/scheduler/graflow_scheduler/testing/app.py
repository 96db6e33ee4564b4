"""Helpers of the tests that drive a started scheduler (conftest.py's ``make_app``, ``app`` and
``client``): its settings, a client of it, outcomes reported on ``gf:outcomes`` as workers append
them (what their dispatches enqueued: graflow_scheduler.testing.enqueued)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
import redis.asyncio as aioredis

from graflow_api.v1 import messages_pb2, scheduler_pb2, scheduler_pb2_grpc, workflow_pb2
from graflow_runtime import keys
from graflow_runtime.signing import UNSIGNED, BusKeys, Kind

from graflow_scheduler.app import SchedulerApp
from graflow_scheduler.settings import SchedulerSettings
from graflow_scheduler.testing.specs import group, spec


def scheduler_settings(redis_url: str, downstream_address: str, **overrides: object) -> SchedulerSettings:
    values: dict[str, object] = {
        "redis_url": redis_url,
        "listen_address": "127.0.0.1:0",
        "result_store_address": downstream_address,
        "consumer_name": "test-scheduler",
        "outcome_block_ms": 50,
        "sweep_interval_s": 3600.0,
        "claim_idle_ms": 60_000,
        "watch_block_ms": 200,
        "shutdown_grace_s": 1.0,
        "rpc_timeout_s": 2.0,
        "breaker_fail_max": 1000,
        "breaker_reset_s": 0.1,
    }
    values.update(overrides)
    return SchedulerSettings(**values)


@contextlib.asynccontextmanager
async def app_client(app: SchedulerApp) -> AsyncIterator[scheduler_pb2_grpc.SchedulerStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield scheduler_pb2_grpc.SchedulerStub(channel)


ETL = spec(["fetch", "clean", "enrich", "report"], ["fetch>g", "g>report"], [group("g", ["clean", "enrich"])])


async def submit(client: scheduler_pb2_grpc.SchedulerStub, workflow: workflow_pb2.WorkflowSpec = ETL) -> str:
    """Submit ``workflow``; its run id."""
    return (await client.SubmitRun(scheduler_pb2.SubmitRunRequest(spec=workflow))).run_id


async def report(
    redis: aioredis.Redis, *outcomes: messages_pb2.TaskOutcome, bus_keys: BusKeys = UNSIGNED
) -> None:
    """Append ``outcomes`` to their runs' cells' outcome streams, as workers do (signed with
    ``bus_keys``)."""
    for item in outcomes:
        data = item.SerializeToString()
        signature = bus_keys.sign_fields(Kind.OUTCOME, data)
        stream = keys.outcomes_stream(keys.cell_of(item.run_id))
        await redis.xadd(stream, {keys.OUTCOME_FIELD: data, **signature})


async def run_end(client: scheduler_pb2_grpc.SchedulerStub, run_id: str) -> str:
    """Watch the run to its end; the terminal event's type name."""
    events = [e async for e in client.WatchRun(scheduler_pb2.WatchRunRequest(run_id=run_id))]
    return scheduler_pb2.RunEvent.Type.Name(events[-1].type)

