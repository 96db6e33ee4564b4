"""Child runs (docs/architecture.md, "Waits"): the node that waits for its child run resumes once
the child ended; canceling a run cancels its children that have not ended, and theirs in turn."""

from __future__ import annotations

import time

import structlog

from graflow_runtime import keys

from graflow_scheduler.errors import RunNotFound
from graflow_scheduler.state.store import RunStore
from graflow_scheduler.state.views import LIVE_STATUSES
from graflow_scheduler.waits.resume import ResumedNodes
from graflow_scheduler.waits.validation import CHILD_PREFIX

log = structlog.get_logger(__name__)


class ChildRuns:
    def __init__(self, store: RunStore, resumed: ResumedNodes) -> None:
        self.store = store
        self.redis = store.redis
        self.resumed = resumed

    async def cancel_children(self, run_id: str) -> None:
        """Cancel the child runs of canceled run ``run_id`` that have not ended, and theirs in turn
        (each one's cancel records its own children). ``cancel_run`` recorded the run in its cell's
        ``children:cancel`` with its end, so the wait timer repeats this until it went through."""
        for raw in await self.redis.smembers(keys.run_children(run_id)):
            child = raw.decode()
            try:
                status = await self.store.cancel_run(
                    child, f"parent run {run_id} was canceled", now_ms=int(time.time() * 1000)
                )
            except RunNotFound:
                continue  # expired: it ended long ago
            if status == "CANCELED":
                log.info("child run canceled with its parent", run_id=child, parent_run_id=run_id)
                await self.cancel_children(child)
        await self.redis.zrem(keys.children_to_cancel(keys.cell_of(run_id)), run_id)

    async def resume_parent(self, child: str) -> None:
        """Resume the parent node of ended run ``child`` if it waits for it (``finish_run`` listed
        the child in its cell's ``children:ended`` with its end), then drop that entry. The index is
        not signed: the child's own meta decides, and an entry naming a live child resumes
        nothing."""
        parent, node, status = await self.redis.hmget(
            keys.run_meta(child), ["parent", "parent_node", "status"]
        )
        if status and status.decode() in LIVE_STATUSES:
            log.warning("a live child run was listed as ended (not by its end); entry dropped, its "
                        "parent keeps waiting", child_run_id=child, status=status.decode())
        elif parent and node:
            resolved = await self.store.resolve_wait(
                "child",
                parent.decode(),
                node.decode(),
                CHILD_PREFIX + child,
                now_ms=int(time.time() * 1000),
                message=f"child run {child} ended {status.decode() if status else ''}".rstrip(),
            )
            if resolved.code == "resumed":
                log.info(
                    "parent node resumed: its child run ended",
                    run_id=parent.decode(),
                    node_id=node.decode(),
                    child_run_id=child,
                )
                await self.resumed.dispatch(parent.decode(), node.decode(), resolved.attempt, resolved.cycle)
        await self.redis.zrem(keys.children_ended(keys.cell_of(child)), child)
