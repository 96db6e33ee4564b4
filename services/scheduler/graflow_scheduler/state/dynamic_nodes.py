"""Nodes added at run time, by (run id, node id): an in-process LRU in front of the runs'
``gf:run:{R}:dyn`` hashes (their form: graflow_scheduler.graph.dynamic)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import redis.asyncio as aioredis
import structlog

from graflow_runtime import keys

from graflow_scheduler.graph.dynamic import DynamicNode, decode
from graflow_scheduler.graph.plan import Plan

log = structlog.get_logger(__name__)


class DynamicNodes:
    """Dynamic nodes by (run id, node id): an LRU in front of the runs' ``dyn`` hashes."""

    def __init__(self, redis: aioredis.Redis, *, capacity: int = 100_000) -> None:
        self._redis = redis
        self._capacity = capacity
        self._nodes: OrderedDict[tuple[str, str], DynamicNode] = OrderedDict()

    def remember(self, run_id: str, node: DynamicNode) -> None:
        self._nodes[(run_id, node.node_id)] = node
        self._nodes.move_to_end((run_id, node.node_id))
        while len(self._nodes) > self._capacity:
            self._nodes.popitem(last=False)

    def cached(self, run_id: str, node_id: str) -> DynamicNode | None:
        return self._nodes.get((run_id, node_id))

    async def load(self, run_id: str, node_ids: Iterable[str], plan: Plan) -> dict[str, DynamicNode]:
        """The dynamic nodes among ``node_ids`` (unknown ids, and static ones, are left out)."""
        found: dict[str, DynamicNode] = {}
        missing: list[str] = []
        for node_id in dict.fromkeys(node_ids):
            if node_id in plan.nodes:
                continue
            node = self.cached(run_id, node_id)
            if node is None:
                missing.append(node_id)
            else:
                found[node_id] = node
        if missing:
            values = await self._redis.hmget(keys.run_dynamic(run_id), missing)
            for node_id, raw in zip(missing, values, strict=True):
                if raw is None:
                    continue
                try:
                    node = decode(node_id, raw, plan)
                except ValueError as exc:
                    log.error("dynamic node unusable", run_id=run_id, node_id=node_id, error=str(exc))
                    continue
                self.remember(run_id, node)
                found[node_id] = node
        return found
