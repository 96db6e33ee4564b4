"""The recovery sweep: at start-up and periodically, dispatch again the READY nodes of every
active run with their current attempt.

A node becomes READY in the same script that records the outcome releasing it, but it is
enqueued in a later round trip; a scheduler that dies in between leaves it READY and undelivered.
Dispatch deduplicates by (run, node, attempt) (the dispatch record), so dispatching what was
already delivered is harmless. The sweep also forgets runs whose state expired, prunes the run
listing, keeps the results of live runs from expiring (graflow_scheduler.recovery.keepalive), and
repairs the status indexes (a batch of each cell's listing per pass, RunReader.repair_status_indexes):
schedulers from before those indexes, still running during a rolling upgrade, end and pause runs
without moving them between the indexes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from graflow_api.v1 import coordinator_pb2
from graflow_runtime import keys
from graflow_runtime.dispatch import Dispatcher, InvalidDelivery
from graflow_runtime.grpc_client import DownstreamUnavailable
from graflow_runtime.loops import BackgroundLoop
from graflow_runtime.redis_client import REDIS_UNAVAILABLE

from graflow_scheduler.downstream.plan_cache import PlanCache
from graflow_scheduler.errors import GraphNotFound, SpecError
from graflow_scheduler.graph.dynamic import task_of
from graflow_scheduler.recovery.keepalive import ResultsKeepAlive
from graflow_scheduler.state.deliveries import delivery
from graflow_scheduler.state.dynamic_nodes import DynamicNodes
from graflow_scheduler.state.reader import RunReader
from graflow_scheduler.state.store import NodeCycle

log = structlog.get_logger(__name__)

RUNS_PER_ROUND = 200
# Runs of each cell's listing checked against their status index per pass: the whole listing is
# walked over several passes, at a bounded cost each.
STATUS_REPAIRS_PER_PASS = 500


@dataclass
class SweepStats:
    sweeps: int = 0
    redispatched: int = 0
    status_entries_fixed: int = 0


class RecoverySweep(BackgroundLoop):
    name = "recovery-sweep"

    def __init__(
        self,
        reader: RunReader,
        plans: PlanCache,
        dispatcher: Dispatcher,
        *,
        interval_s: float,
        retention_s: int,
        dynamic: DynamicNodes | None = None,
        keepalive: ResultsKeepAlive | None = None,
    ) -> None:
        self.reader = reader
        self.keepalive = keepalive
        self.dynamic = dynamic or DynamicNodes(reader.redis)
        self.plans = plans
        self.dispatcher = dispatcher
        self.interval_s = interval_s
        self.retention_s = retention_s
        self.stats = SweepStats()
        # Per cell, the rank in its listing where the next status repair starts.
        self._repair_from: dict[int, int] = {}
        super().__init__()

    async def step(self) -> float:
        """One periodic pass (the start-up pass is :meth:`sweep_safely`, awaited by the app, which
        starts the loop one interval later). Stopping interrupts it: the next pass repeats it."""
        with self.interruptible():
            await self.sweep_safely()
        return self.interval_s

    async def sweep_safely(self) -> None:
        """One pass; failures are logged and left to the next pass."""
        try:
            await self.sweep_once()
        except (DownstreamUnavailable, *REDIS_UNAVAILABLE) as exc:
            log.warning("recovery sweep incomplete; retried next period", error=str(exc))
        except Exception:  # noqa: BLE001 - keep sweeping; the next period retries
            log.exception("recovery sweep failed; retried next period")

    async def sweep_once(self) -> int:
        """One pass over the active runs; returns the number of deliveries sent."""
        self.stats.sweeps += 1
        run_ids = await self.reader.active_run_ids()
        sent = 0
        for start in range(0, len(run_ids), RUNS_PER_ROUND):
            if self.keepalive is not None:
                await self.keepalive.keep(run_ids[start : start + RUNS_PER_ROUND])
            ready_runs, gone = await self.reader.ready_runs(run_ids[start : start + RUNS_PER_ROUND])
            if gone:
                log.warning("active runs without state forgotten", run_ids=gone)
                await self.reader.forget(gone)
            deliveries: list[coordinator_pb2.Delivery] = []
            for ready_run in ready_runs:
                try:
                    plan = await self.plans.get(ready_run.graph_hash)
                except (GraphNotFound, SpecError) as exc:
                    log.error(
                        "cannot dispatch READY nodes: graph unusable", run_id=ready_run.run_id, error=str(exc)
                    )
                    continue
                # Nodes added at run time are not in the plan: their specs are in the run's dyn hash.
                found = await self.dynamic.load(ready_run.run_id, [n for n, _ in ready_run.ready], plan)
                for node_id, attempt in ready_run.ready:
                    task = task_of(plan, found, node_id)
                    if task is None:
                        continue
                    cycle = ready_run.cycles.get(node_id, NodeCycle(0))
                    deliveries.append(
                        delivery(
                            plan,
                            ready_run.run_id,
                            node_id,
                            attempt,
                            lost_attempts=ready_run.lost.get(node_id, 0),
                            task=task,
                            cycle=cycle.cycle,
                            iteration_data_json=cycle.data_json,
                            feedback=cycle.feedback,
                        )
                    )
            if deliveries:
                try:
                    counts = await self.dispatcher.dispatch(deliveries)
                except InvalidDelivery as exc:
                    log.error("invalid delivery not dispatched by the sweep", error=str(exc))
                    continue
                sent += len(deliveries)
                if counts.accepted:
                    log.info("recovery sweep dispatched undelivered READY nodes", accepted=counts.accepted)
        self.stats.redispatched += sent
        await self.reader.prune_index(int(time.time() * 1000) - self.retention_s * 1000)
        await self._repair_status_indexes()
        return sent

    async def _repair_status_indexes(self) -> None:
        for cell in keys.cells():
            offset, fixed = await self.reader.repair_status_indexes(
                cell, self._repair_from.get(cell, 0), STATUS_REPAIRS_PER_PASS
            )
            self._repair_from[cell] = offset
            if fixed:
                self.stats.status_entries_fixed += fixed
                log.warning(
                    "run status indexes repaired (a scheduler from before them ended or paused runs: "
                    "upgrade every replica)",
                    cell=cell,
                    entries=fixed,
                )
