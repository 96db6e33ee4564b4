"""Test doubles of the result-store and coordinator network APIs (real gRPC servers on port 0) and
helpers to drive a worker in-process. Used only by this service's tests; the end-to-end suite runs
the real services."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from graflow import payload
from graflow_api.v1 import coordinator_pb2 as co_pb2
from graflow_api.v1 import coordinator_pb2_grpc as co_grpc
from graflow_api.v1 import messages_pb2
from graflow_api.v1 import result_store_pb2 as rs_pb2
from graflow_api.v1 import result_store_pb2_grpc as rs_grpc
from graflow_runtime import keys
from graflow_runtime.signing import UNSIGNED, BusKeys, Kind

from graflow_worker.settings import WorkerSettings
from graflow_worker.testing.tasks import PROBE
from graflow_worker.worker import Worker, create_worker

TASKS_MODULE = "graflow_worker.testing.tasks"
Disposition = rs_pb2.PutResultsResponse


class FakeResultStore(rs_grpc.ResultStoreServicer):
    """Results and channels in dicts, with the contract's attempt rules."""

    def __init__(self) -> None:
        self.results: dict[tuple[str, str], rs_pb2.NodeResult] = {}
        self.channels: dict[str, dict[str, Any]] = {}
        self.put_calls = 0
        # Like the real service: a value over the limit rejects the whole request.
        self.max_value_bytes = 1 << 30
        self.get_results_error: grpc.StatusCode | None = None
        self.get_calls: list[rs_pb2.GetResultsRequest] = []

    def put(self, run_id: str, node_id: str, value: Any, attempt: int = 1, task_type: str = "") -> None:
        self.results[(run_id, node_id)] = rs_pb2.NodeResult(
            run_id=run_id, node_id=node_id, attempt=attempt, value=payload.encode(value),
            task_type=task_type or node_id)

    def value(self, run_id: str, node_id: str) -> Any:
        return payload.decode(self.results[(run_id, node_id)].value)

    async def PutResults(self, request, context):  # noqa: N802
        self.put_calls += 1
        if any(len(r.value.data) > self.max_value_bytes for r in request.results):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "value over the limit (test)")
        dispositions = []
        for result in request.results:
            key = (result.run_id, result.node_id)
            known = self.results.get(key)
            if known is None or known.attempt < result.attempt:
                self.results[key] = result
                dispositions.append(Disposition.DISPOSITION_STORED)
            elif known.attempt == result.attempt:
                dispositions.append(Disposition.DISPOSITION_DUPLICATE)
            else:
                dispositions.append(Disposition.DISPOSITION_STALE)
        return rs_pb2.PutResultsResponse(dispositions=dispositions)

    async def GetResults(self, request, context):  # noqa: N802
        self.get_calls.append(request)
        if self.get_results_error is not None:
            await context.abort(self.get_results_error, "GetResults refused (test)")
        keys_ = [(request.run_id, n) for n in request.node_ids]
        found = [self.results[k] for k in keys_ if k in self.results]
        missing = [k[1] for k in keys_ if k not in self.results]
        return rs_pb2.GetResultsResponse(results=found, missing_node_ids=missing)

    async def ChannelGet(self, request, context):  # noqa: N802
        chan = self.channels.get(request.run_id, {})
        return rs_pb2.ChannelGetResponse(entries=[
            rs_pb2.ChannelEntry(key=k, value=chan[k]) for k in request.keys if k in chan])

    async def ChannelSet(self, request, context):  # noqa: N802
        chan = self.channels.setdefault(request.run_id, {})
        for entry in request.entries:
            chan[entry.key] = entry.value
        return rs_pb2.ChannelSetResponse()

    async def ChannelDelete(self, request, context):  # noqa: N802
        chan = self.channels.get(request.run_id, {})
        deleted = sum(1 for k in request.keys if chan.pop(k, None) is not None)
        return rs_pb2.ChannelDeleteResponse(deleted=deleted)

    async def ChannelKeys(self, request, context):  # noqa: N802
        return rs_pb2.ChannelKeysResponse(keys=sorted(self.channels.get(request.run_id, {})))


class FakeCoordinator(co_grpc.CoordinatorServicer):
    """Records registrations, heartbeats and departures; can fail or forget on demand."""

    def __init__(self, heartbeat_interval_ms: int = 50, lease_timeout_ms: int = 300) -> None:
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.lease_timeout_ms = lease_timeout_ms
        self.registrations: list[co_pb2.RegisterWorkerRequest] = []
        self.heartbeats: list[co_pb2.HeartbeatRequest] = []
        self.failed_heartbeats = 0
        self.deregistrations: list[str] = []
        self.live: set[str] = set()
        self.fail_heartbeats = False
        self.commands: list[int] = []
        # False: answer HeartbeatStream with UNIMPLEMENTED, as a coordinator older than the stream.
        self.streams = True
        self.goodbyes: list[str] = []

    async def RegisterWorker(self, request, context):  # noqa: N802
        self.registrations.append(request)
        self.live.add(request.worker_id)
        return co_pb2.RegisterWorkerResponse(
            heartbeat_interval_ms=self.heartbeat_interval_ms, lease_timeout_ms=self.lease_timeout_ms)

    async def Heartbeat(self, request, context):  # noqa: N802
        if self.fail_heartbeats:
            self.failed_heartbeats += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "coordinator is down (test)")
        if request.worker_id not in self.live:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown worker {request.worker_id}")
        self.heartbeats.append(request)
        commands, self.commands = self.commands, []
        return co_pb2.HeartbeatResponse(commands=commands)

    async def HeartbeatStream(self, request_iterator, context):  # noqa: N802
        if not self.streams:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no HeartbeatStream (test)")
        while (request := await context.read()) is not grpc.aio.EOF:
            if request.leaving:
                self.goodbyes.append(request.worker_id)
                return
            await context.write(await self.Heartbeat(request, context))

    async def DeregisterWorker(self, request, context):  # noqa: N802
        self.deregistrations.append(request.worker_id)
        self.live.discard(request.worker_id)
        return co_pb2.DeregisterWorkerResponse()


class FakeServer:
    """A real gRPC server for a servicer on 127.0.0.1; can be stopped and restarted on its port."""

    def __init__(self, add: Callable[[Any, grpc.aio.Server], None], servicer: Any) -> None:
        self._add = add
        self.servicer = servicer
        self.port = 0
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> FakeServer:
        server = grpc.aio.server()
        self._add(self.servicer, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._server = server
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
            self._server = None


def envelope(run_id: str, node_id: str, task_type: str, *, attempt: int = 1, args: dict | None = None,
             inputs: Iterable[str] = (), timeout_ms: int = 0,
             queue: str = "default") -> messages_pb2.TaskEnvelope:
    return messages_pb2.TaskEnvelope(
        run_id=run_id, node_id=node_id, task_type=task_type, attempt=attempt,
        args_json=payload.dumps(args) if args else b"", input_node_ids=list(inputs),
        timeout_ms=timeout_ms, queue=queue, max_attempts=3,
    )


async def enqueue(redis: aioredis.Redis, *envelopes: messages_pb2.TaskEnvelope,
                  ended_cursor: bytes | None = None, high: bool = False,
                  bus_keys: BusKeys = UNSIGNED) -> list[bytes]:
    """Append envelopes as the coordinator does; ``ended_cursor``: the ended-runs stream's last id it
    would record beside them (keys.ENDED_CURSOR_FIELD), none by default (as the retry timer);
    ``high``: to the queue's high lane instead of its normal lane, in the run's cell; signed with
    ``bus_keys``."""
    lane = keys.queue_high_stream if high else keys.queue_stream
    ids = []
    for env in envelopes:
        data = env.SerializeToString()
        fields = {keys.ENVELOPE_FIELD: data, **bus_keys.sign_fields(Kind.ENVELOPE, data)}
        if ended_cursor is not None:
            fields[keys.ENDED_CURSOR_FIELD] = ended_cursor
        ids.append(await redis.xadd(lane(env.queue or "default", keys.cell_of(env.run_id)), fields))
    return ids



async def outcomes(redis: aioredis.Redis) -> list[messages_pb2.TaskOutcome]:
    """The outcomes appended so far, cell after cell."""
    entries = [entry for cell in keys.cells() for entry in await redis.xrange(keys.outcomes_stream(cell))]
    return [messages_pb2.TaskOutcome.FromString(fields[keys.OUTCOME_FIELD]) for _, fields in entries]


async def eventually(check: Callable[[], Awaitable[Any] | Any], *, timeout: float = 15.0,
                     what: str = "condition") -> Any:
    """Wait (bounded) until ``check()`` returns something truthy; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def wait_outcomes(redis: aioredis.Redis, count: int,
                        timeout: float = 15.0) -> list[messages_pb2.TaskOutcome]:
    async def enough() -> list[messages_pb2.TaskOutcome] | None:
        found = await outcomes(redis)
        return found if len(found) >= count else None

    return await eventually(enough, timeout=timeout, what=f"{count} outcomes")


async def start_run(redis: aioredis.Redis, run_id: str) -> None:
    """A live run's meta as the scheduler's create_run writes it ('ended' = "0")."""
    await redis.hset(keys.run_meta(run_id), mapping={"status": "RUNNING", keys.RUN_ENDED_AT_FIELD: "0"})


async def end_run(redis: aioredis.Redis, run_id: str, status: str = "FAILED") -> None:
    """What the scheduler's finish_run does for the workers: the run's meta says it ended, and the
    end is appended to gf:ended (in one step)."""
    async with redis.pipeline(transaction=True) as pipe:
        ended = int(time.time() * 1000)
        pipe.hset(keys.run_meta(run_id), mapping={"status": status, keys.RUN_ENDED_AT_FIELD: ended})
        pipe.xadd(keys.runs_ended(keys.cell_of(run_id)),
                  {keys.RUN_ENDED_RUN_FIELD: run_id, keys.RUN_ENDED_STATUS_FIELD: status})
        await pipe.execute()


async def pending_count(redis: aioredis.Redis, queue: str = "default") -> int:
    """Entries delivered and not acknowledged in both lanes of ``queue`` in every cell (a lane
    without its stream or group holds none)."""
    pending = 0
    for stream in (lane for cell in keys.cells() for lane in keys.queue_lanes(queue, cell)):
        try:
            pending += int((await redis.xpending(stream, keys.WORKER_GROUP))["pending"])
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
    return pending


class Stack:
    """Real Redis + fake result-store and coordinator servers + workers started in-process."""

    def __init__(self, redis: aioredis.Redis, redis_url: str) -> None:
        self.redis = redis
        self.redis_url = redis_url
        self.store = FakeResultStore()
        self.coordinator = FakeCoordinator()
        self.store_server = FakeServer(rs_grpc.add_ResultStoreServicer_to_server, self.store)
        self.coordinator_server = FakeServer(co_grpc.add_CoordinatorServicer_to_server, self.coordinator)
        self.workers: list[Worker] = []
        self._ids = 0

    async def __aenter__(self) -> Stack:
        await self.store_server.start()
        await self.coordinator_server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for gate in list(PROBE.gates.values()):
            gate.set()
        for worker in self.workers:
            await worker.stop()
        await self.store_server.stop()
        await self.coordinator_server.stop()

    def settings(self, **overrides: Any) -> WorkerSettings:
        self._ids += 1
        values: dict[str, Any] = {
            "worker_id": f"test-worker-{self._ids}",
            "redis_url": self.redis_url,
            "task_modules": [TASKS_MODULE],
            "coordinator_address": self.coordinator_server.address,
            "result_store_address": self.store_server.address,
            "concurrency": 4,
            "read_block_ms": 1000,
            "rpc_timeout_s": 2.0,
            "breaker_fail_max": 3,
            "breaker_reset_s": 0.1,
            "shutdown_grace_s": 5.0,
            # Every result through the result-store double, where most tests look for it; the
            # inline results (the product's default) are tested with a limit (committer_test.py).
            "inline_result_max_bytes": 0,
        }
        values.update(overrides)
        return WorkerSettings(**values)

    def worker(self, **overrides: Any) -> Worker:
        worker = create_worker(self.settings(**overrides))
        self.workers.append(worker)
        return worker

    async def start_worker(self, **overrides: Any) -> Worker:
        worker = self.worker(**overrides)
        await worker.start()
        return worker
