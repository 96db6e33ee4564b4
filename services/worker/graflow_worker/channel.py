"""A run's channel for ``TaskContext.channel``, backed by the result-store's Channel RPCs.

Task functions are synchronous code running in worker threads, so each call is handed to the
event loop with ``asyncio.run_coroutine_threadsafe`` and waited for in the thread. The RPC goes
through the result-store :class:`Downstream` (deadline + breaker). An ``async def`` task runs on
the loop itself and must not block it: it calls the channel through ``asyncio.to_thread``, e.g.
``await asyncio.to_thread(ctx.channel.get, "key")``; calling it directly raises a clear error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import grpc
import structlog

from graflow import payload
from graflow_api.v1 import result_store_pb2 as rs_pb2
from graflow_api.v1 import result_store_pb2_grpc as rs_grpc
from graflow_runtime.backoff import Backoff
from graflow_runtime.grpc_client import Downstream, DownstreamUnavailable

from graflow_worker.intake import Intake

T = TypeVar("T")
log = structlog.get_logger(__name__)
# The committer's pause reason (committer.PAUSE_RESULT_STORE; not imported: it imports the runner):
# an unreachable result-store pauses intake whichever call met it.
PAUSE_RESULT_STORE = "result-store unavailable"


_OPERATIONS = {
    "append": rs_pb2.ChannelUpdateRequest.OPERATION_APPEND,
    "prepend": rs_pb2.ChannelUpdateRequest.OPERATION_PREPEND,
    "add": rs_pb2.ChannelUpdateRequest.OPERATION_ADD,
}


def call_from_thread(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T], timeout_s: float,
                     what: str) -> T:
    """Run ``coro`` on the worker's event loop and wait for it in this (task) thread. From the loop's
    own thread (an ``async def`` task) that would block the loop: a clear error says what to do."""
    try:
        on_loop = asyncio.get_running_loop() is loop
    except RuntimeError:  # no loop in this thread: a worker thread, as it should be
        on_loop = False
    if on_loop:
        coro.close()
        raise RuntimeError(
            f"{what} is synchronous and would block the event loop of this async task; "
            f"call it through a thread: await asyncio.to_thread(...)"
        )
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=timeout_s + 5)


class ResultStoreChannel:
    """:class:`graflow.context.ChannelBackend` and :class:`graflow.context.CheckpointBackend` for
    one run."""

    def __init__(self, run_id: str, *, downstream: Downstream, stub: rs_grpc.ResultStoreStub,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._run_id = run_id
        self._downstream = downstream
        self._stub = stub
        self._loop = loop

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return call_from_thread(self._loop, coro, self._downstream.timeout_s, "ctx.channel")

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        return self._run(self.get_many_async(keys))

    async def get_many_async(self, keys: list[str]) -> dict[str, Any]:
        """As :meth:`get_many`, on the event loop (the worker's parameter binding)."""
        request = rs_pb2.ChannelGetRequest(run_id=self._run_id, keys=keys)
        response = await self._downstream.call(self._stub.ChannelGet, request)
        return {entry.key: payload.decode(entry.value) for entry in response.entries}

    def set_many(self, values: dict[str, Any], ttl_s: float | None) -> None:
        entries = [rs_pb2.ChannelEntry(key=k, value=payload.encode(v)) for k, v in values.items()]
        request = rs_pb2.ChannelSetRequest(
            run_id=self._run_id, entries=entries, ttl_ms=round(ttl_s * 1000) if ttl_s else 0
        )
        self._run(self._downstream.call(self._stub.ChannelSet, request))

    def delete(self, keys: list[str]) -> int:
        request = rs_pb2.ChannelDeleteRequest(run_id=self._run_id, keys=keys)
        return self._run(self._downstream.call(self._stub.ChannelDelete, request)).deleted

    def keys(self) -> list[str]:
        request = rs_pb2.ChannelKeysRequest(run_id=self._run_id)
        return list(self._run(self._downstream.call(self._stub.ChannelKeys, request)).keys)

    def update(self, key: str, operation: str, value: Any, ttl_s: float | None) -> Any:
        request = rs_pb2.ChannelUpdateRequest(
            run_id=self._run_id, key=key, operation=_OPERATIONS[operation], value=payload.encode(value),
            ttl_ms=round(ttl_s * 1000) if ttl_s else 0,
        )
        try:
            response = self._run(self._downstream.call(self._stub.ChannelUpdate, request))
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
                raise ValueError(f"channel {operation} of key {key!r}: {exc.details()}") from None
            raise
        return payload.decode(response.value) if response.HasField("value") else None

    def put_checkpoint(self, node_id: str, state: Any) -> None:
        request = rs_pb2.PutCheckpointRequest(
            run_id=self._run_id, node_id=node_id, value=payload.encode(state)
        )
        self._run(self._downstream.call(self._stub.PutCheckpoint, request))

    def get_checkpoint(self, node_id: str) -> tuple[bool, Any]:
        request = rs_pb2.GetCheckpointRequest(run_id=self._run_id, node_id=node_id)
        response = self._run(self._downstream.call(self._stub.GetCheckpoint, request))
        return response.found, payload.decode(response.value) if response.found else None


async def read_channel_values(backend: Any, names: list[str], intake: Intake | None) -> dict[str, Any]:
    """Channel values of ``names`` for parameter binding, in one call. While the result-store is
    unavailable it waits (intake paused, nothing acknowledged), like the upstream results; a
    business error (``AioRpcError``) propagates."""
    fetch = getattr(backend, "get_many_async", None)
    backoff = Backoff()
    paused = False
    while True:
        try:
            if fetch is not None:
                values = dict(await fetch(names))
            else:
                values = dict(await asyncio.to_thread(backend.get_many, names))
        except DownstreamUnavailable as exc:
            if intake is not None:
                intake.pause(PAUSE_RESULT_STORE)
                paused = True
            log.warning("cannot read channel values; retrying", error=str(exc))
            await asyncio.sleep(backoff.next_delay())
            continue
        if paused and intake is not None:
            intake.resume(PAUSE_RESULT_STORE)
        return values
