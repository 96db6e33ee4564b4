"""Keeping live runs' results: the result-store expires a run's results, channel and checkpoints a
retention period after their last write, whether the run ended or not. The recovery sweep asks it
(``KeepRunsAlive``) to restart that period for every run that has not ended and was not kept alive
for ``interval_s``, so a run that waits for days (human feedback, child runs) keeps what its tasks
wrote, and the graph it runs (stored graphs expire like results). The run's meta field ``kept``
records when (its creation counts as the first time)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis.asyncio as aioredis
import structlog

from graflow_api.v1 import result_store_pb2, result_store_pb2_grpc
from graflow_runtime import keys
from graflow_runtime.grpc_client import Downstream

log = structlog.get_logger(__name__)

PER_CALL = 1000


class ResultsKeepAlive:
    def __init__(
        self,
        redis: aioredis.Redis,
        stub: result_store_pb2_grpc.ResultStoreStub,
        downstream: Downstream,
        *,
        interval_s: float,
    ) -> None:
        self.redis = redis
        self._stub = stub
        self._downstream = downstream
        self.interval_ms = int(interval_s * 1000)
        self.kept = 0

    async def keep(self, run_ids: Sequence[str]) -> int:
        """Keep alive those of ``run_ids`` (runs not ended) that are due; returns how many. Raises
        DownstreamUnavailable (the next sweep tries again)."""
        now = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hmget(keys.run_meta(run_id), ["kept", "created", "graph"])
            marks = await pipe.execute()
        graphs: dict[str, str] = {}
        for run_id, (kept, created, graph) in zip(run_ids, marks, strict=True):
            if created is not None and now - int(kept or created) >= self.interval_ms:
                graphs[run_id] = graph.decode() if graph else ""
        due = list(graphs)
        for start in range(0, len(due), PER_CALL):
            chunk = due[start : start + PER_CALL]
            hashes = sorted({graphs[run_id] for run_id in chunk if graphs[run_id]})
            request = result_store_pb2.KeepRunsAliveRequest(run_ids=chunk, graph_hashes=hashes)
            await self._downstream.call(self._stub.KeepRunsAlive, request)
            async with self.redis.pipeline(transaction=False) as pipe:
                for run_id in chunk:
                    pipe.hset(keys.run_meta(run_id), "kept", now)
                await pipe.execute()
        if due:
            self.kept += len(due)
            log.info("results of live runs kept alive", runs=len(due))
        return len(due)
