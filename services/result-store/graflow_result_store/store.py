"""Redis access of the result-store: results, graphs and channels (layout in :mod:`.scripts`)."""

from __future__ import annotations

import enum
from collections.abc import Sequence

import redis.asyncio as aioredis

from graflow_api.v1 import result_store_pb2
from graflow_runtime import keys
from graflow_runtime.errors import FailedPrecondition, ResourceExhausted
from graflow_runtime.limits import MAX_CHANNEL_KEYS
from graflow_runtime.scripts import ScriptArg, ScriptCall

from graflow_result_store import scripts


class Disposition(enum.IntEnum):
    """What :meth:`ResultStore.put_results` did with one result (values of the script's reply)."""

    STORED = 1
    DUPLICATE = 2
    STALE = 3


def channel_expiry_key(run_id: str) -> str:
    """hash channel key -> expiry (Unix ms) of entries written with a TTL."""
    return f"{keys.channel(run_id)}:exp"


def run_keys(run_id: str) -> list[str]:
    """Every result-store key of a run (graphs are shared by runs and do not expire with them)."""
    return [
        keys.results(run_id),
        keys.result_attempts(run_id),
        keys.channel(run_id),
        channel_expiry_key(run_id),
        keys.checkpoints(run_id),
    ]


class UpdateRejected(FailedPrecondition):
    """The stored value does not fit the operation (not a list, not a number)."""


class ValueTooLarge(ResourceExhausted):
    """An update would make a channel value larger than the largest value the store takes."""


class TooManyChannelKeys(ResourceExhausted):
    """A write would give a run more channel keys than MAX_CHANNEL_KEYS."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what}; the limit MAX_CHANNEL_KEYS is {MAX_CHANNEL_KEYS:,} keys per run: "
            "delete keys the run no longer needs, or keep many values under one key"
        )


class ResultStore:
    """Results, graphs and channels in Redis. Validation is the caller's job (the servicer)."""

    def __init__(self, redis: aioredis.Redis, *, retention_s: int) -> None:
        self._redis = redis
        self._retention_s = retention_s

    # ---- results ----
    async def put_results(self, results: Sequence[result_store_pb2.NodeResult]) -> list[Disposition]:
        """Store a batch; highest attempt wins, the first value of an attempt is kept. One script
        call per cell of the key layout the batch's runs are in (a run's keys carry its cell's
        hash tag, so each call stays in one Redis Cluster slot), pipelined: one round trip. Each
        call is atomic; a batch spanning cells is not (each result is fenced on its own, so a
        retried batch stores nothing twice)."""
        if not results:
            return []
        by_cell: dict[int, list[int]] = {}
        for index, result in enumerate(results):
            by_cell.setdefault(keys.cell_of(result.run_id), []).append(index)
        calls: list[ScriptCall] = []
        for indexes in by_cell.values():
            script_keys: list[str] = []
            args: list[ScriptArg] = [self._retention_s]
            for result in (results[i] for i in indexes):
                script_keys += [keys.results(result.run_id), keys.result_attempts(result.run_id)]
                args += [result.node_id, result.attempt, result.SerializeToString()]
            calls.append((script_keys, args))
        replies = await scripts.PUT_RESULTS.run_many(self._redis, calls)
        dispositions: list[Disposition] = [Disposition.STORED] * len(results)
        for indexes, reply in zip(by_cell.values(), replies, strict=True):
            for index, code in zip(indexes, reply, strict=True):
                dispositions[index] = Disposition(int(code))
        return dispositions

    async def get_results(
        self, run_id: str, node_ids: Sequence[str]
    ) -> tuple[list[result_store_pb2.NodeResult], list[str]]:
        """Found results in request order, and the node ids without a result."""
        if not node_ids:
            return [], []
        values = await self._redis.hmget(keys.results(run_id), list(node_ids))
        found: list[result_store_pb2.NodeResult] = []
        missing: list[str] = []
        for node_id, raw in zip(node_ids, values, strict=True):
            if raw is None:
                missing.append(node_id)
            else:
                found.append(result_store_pb2.NodeResult.FromString(raw))
        return found, missing

    # ---- graphs ----
    async def put_graph(self, graph_hash: str, spec_bytes: bytes) -> bool:
        """Store a graph under its hash unless present; either way it expires a retention period
        from now. Graphs are shared by every run with the same structure: each PutGraph (a new
        run's) and each keep-alive of a live run restarts the period, so a graph outlives its
        last run by about the retention, like that run's results (without an expiry, one graph
        per workflow shape ever submitted stayed for ever)."""
        key = keys.graph(graph_hash)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(key, spec_bytes, nx=True, ex=self._retention_s)
            pipe.expire(key, self._retention_s)
            created, _ = await pipe.execute()
        return bool(created)

    async def get_graph(self, graph_hash: str) -> bytes | None:
        return await self._redis.get(keys.graph(graph_hash))

    # ---- channels ----
    def _channel_keys_of(self, run_id: str) -> list[str]:
        return [keys.channel(run_id), channel_expiry_key(run_id)]

    async def channel_get(self, run_id: str, channel_keys: Sequence[str]) -> dict[str, bytes]:
        """Live entries among ``channel_keys`` (expired and absent keys are left out)."""
        if not channel_keys:
            return {}
        flat = await scripts.CHANNEL_GET.run(self._redis, self._channel_keys_of(run_id), list(channel_keys))
        return {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}

    async def channel_set(self, run_id: str, entries: Sequence[tuple[str, bytes]], ttl_ms: int) -> None:
        if not entries:
            return
        args: list[bytes | str | int] = [ttl_ms, self._retention_s, MAX_CHANNEL_KEYS]
        for key, value in entries:
            args += [key, value]
        reply = await scripts.CHANNEL_SET.run(self._redis, self._channel_keys_of(run_id), args)
        if isinstance(reply, list):
            raise TooManyChannelKeys(f"the run would hold {int(reply[1]):,} channel keys")

    async def channel_delete(self, run_id: str, channel_keys: Sequence[str]) -> int:
        if not channel_keys:
            return 0
        return int(
            await scripts.CHANNEL_DELETE.run(self._redis, self._channel_keys_of(run_id), list(channel_keys))
        )

    async def channel_keys(self, run_id: str) -> list[str]:
        reply = await scripts.CHANNEL_KEYS.run(self._redis, self._channel_keys_of(run_id), [])
        return sorted(key.decode() for key in reply)

    async def channel_update(self, run_id: str, key: str, operation: int, value_json: bytes,
                             ttl_ms: int, *, max_bytes: int) -> bytes:
        """Append/prepend (operation 1/2) or add (3) ``value_json`` atomically; the new Payload bytes.
        A list (or number) that would be longer than ``max_bytes`` raises :class:`ValueTooLarge`
        and is left as it was: a list otherwise grew for ever (each append copies it whole)."""
        code, stored = await scripts.CHANNEL_UPDATE.run(
            self._redis,
            self._channel_keys_of(run_id),
            [key, operation, value_json, ttl_ms, self._retention_s, max_bytes, MAX_CHANNEL_KEYS],
        )
        if int(code) == 4:
            raise TooManyChannelKeys(f"channel key {key!r} would be a new key")
        if int(code) == 3:
            raise ValueTooLarge(
                f"channel key {key!r}: the update would make its value {int(stored)} bytes, over the limit "
                f"of {max_bytes} bytes (GRAFLOW_RESULT_STORE_MAX_VALUE_BYTES); nothing was changed: "
                "start another key, or keep large data elsewhere"
            )
        if int(code) == 1:
            raise UpdateRejected(f"channel key {key!r} does not hold a JSON list")
        if int(code) == 2:
            raise UpdateRejected(f"channel key {key!r} does not hold a JSON number")
        return stored

    # ---- checkpoints ----
    async def put_checkpoint(self, run_id: str, node_id: str, payload_bytes: bytes) -> None:
        key = keys.checkpoints(run_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, node_id, payload_bytes)
            pipe.expire(key, self._retention_s)
            await pipe.execute()

    async def get_checkpoint(self, run_id: str, node_id: str) -> bytes | None:
        return await self._redis.hget(keys.checkpoints(run_id), node_id)

    # ---- retention ----
    async def keep_alive(self, run_ids: Sequence[str], graph_hashes: Sequence[str] = ()) -> None:
        """Every key of ``run_ids`` and the graphs of ``graph_hashes`` expire a retention period
        from now (absent keys stay absent)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                for key in run_keys(run_id):
                    pipe.expire(key, self._retention_s)
            for digest in graph_hashes:
                pipe.expire(keys.graph(digest), self._retention_s)
            await pipe.execute()
