"""Dispatch of a node a wait resumed (its answer came, or its child run ended). The script that
resumed it made it READY, so when this dispatch fails the recovery sweep enqueues it."""

from __future__ import annotations

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from graflow_runtime import keys
from graflow_runtime.dispatch import Dispatcher, InvalidDelivery, QueueStreamsVanishing
from graflow_runtime.grpc_client import DownstreamUnavailable

from graflow_scheduler.downstream.plan_cache import PlanCache, RunGraphs
from graflow_scheduler.errors import GraphNotFound, SpecError
from graflow_scheduler.graph.dynamic import task_of
from graflow_scheduler.state.deliveries import delivery
from graflow_scheduler.state.dynamic_nodes import DynamicNodes
from graflow_scheduler.state.store import NodeCycle

log = structlog.get_logger(__name__)


class ResumedNodes:
    def __init__(
        self,
        redis: aioredis.Redis,
        plans: PlanCache,
        graphs: RunGraphs,
        dispatcher: Dispatcher,
        dynamic: DynamicNodes,
    ) -> None:
        self.redis = redis
        self.plans = plans
        self.graphs = graphs
        self.dispatcher = dispatcher
        self.dynamic = dynamic

    async def dispatch(self, run_id: str, node_id: str, attempt: int, cycle: NodeCycle) -> None:
        try:
            graph = (await self.graphs.hashes([run_id])).get(run_id)
            if graph is None:
                return
            plan = await self.plans.get(graph)
            found = await self.dynamic.load(run_id, [node_id], plan)
            task = task_of(plan, found, node_id)
            if task is None:
                return
            lost = int(await self.redis.hget(keys.run_joins(run_id), f"{node_id}:lost") or 0)
            await self.dispatcher.dispatch(
                [
                    delivery(
                        plan,
                        run_id,
                        node_id,
                        attempt,
                        task=task,
                        lost_attempts=lost,
                        cycle=cycle.cycle,
                        iteration_data_json=cycle.data_json,
                        feedback=cycle.feedback,
                    )
                ]
            )
        except (
            DownstreamUnavailable,
            InvalidDelivery,
            QueueStreamsVanishing,
            RedisError,
            GraphNotFound,
            SpecError,
        ) as exc:
            # The node is READY in Redis: the recovery sweep dispatches it.
            log.warning(
                "resumed node not dispatched yet; the recovery sweep will",
                run_id=run_id,
                node_id=node_id,
                error=str(exc),
            )
