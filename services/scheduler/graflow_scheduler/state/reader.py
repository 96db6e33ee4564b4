"""Reads of run state: one run, the run listing (newest first, paged), event history, and what
the recovery sweep needs (active runs and their READY nodes)."""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from graflow_api.v1 import common_pb2, result_store_pb2, scheduler_pb2
from graflow_runtime import keys
from graflow_runtime.runids import is_run_id

from graflow_scheduler.errors import BadPageToken, RunNotFound
from graflow_scheduler.graph.dynamic import summaries as dynamic_summaries
from graflow_scheduler.graph.plan import Plan
from graflow_scheduler.state import scripts
from graflow_scheduler.state.store import NodeCycle
from graflow_scheduler.state.views import add_nodes, run_from_meta

PlanLookup = Callable[[str], Awaitable[Plan | None]]


@dataclass(frozen=True, slots=True)
class ReadyRun:
    run_id: str
    graph_hash: str
    # READY nodes with their current attempt.
    ready: tuple[tuple[str, int], ...]
    # READY node -> its attempts lost with their worker (absent = 0).
    lost: dict[str, int] = field(default_factory=dict)
    # READY node on a re-run or with iteration data -> its cycle (absent = cycle 0, no data).
    cycles: dict[str, NodeCycle] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunResultRead:
    meta: dict[bytes, bytes]
    # The sinks' results are in ``results`` (False: the run did not succeed, or they are larger).
    inline: bool
    results: list[result_store_pb2.NodeResult]


@dataclass(frozen=True, slots=True)
class RunFilters:
    """ListRuns' filters beside the status (0 / empty = no bound)."""

    workflow_name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    created_after_ms: int = 0
    created_before_ms: int = 0

    @property
    def on_meta(self) -> bool:
        """Whether runs are filtered on their meta (not only by an index)."""
        return bool(self.workflow_name or self.labels)

    def matches(self, fields: Sequence[bytes | None], status: str | None) -> bool:
        """Whether a run whose meta holds ``fields`` (:data:`FILTERED_FIELDS`; None: the run
        expired) is listed, with ``status`` (None = any; re-checked: a status index may be read
        just before the run moved to another)."""
        run_status, name, labels = fields
        if run_status is None or (status is not None and run_status.decode() != status):
            return False
        if self.workflow_name and (name or b"").decode() != self.workflow_name:
            return False
        if not self.labels:
            return True
        carried = json.loads(labels or b"{}")
        return all(carried.get(key) == value for key, value in self.labels.items())

    def in_window(self, created_ms: int) -> bool:
        return created_ms >= self.created_after_ms and (
            not self.created_before_ms or created_ms < self.created_before_ms
        )


NO_FILTERS = RunFilters()
# The meta fields a filtered listing reads first (RunFilters.matches).
FILTERED_FIELDS = ("status", "name", "labels")
# Runs read per round trip by a listing filtered on their meta.
SCAN_BATCH = 200


def _status_index(cell: int, *, status: str) -> str:
    return keys.runs_by_status(cell, status)


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    """An HGETALL reply returned by a script (a flat list) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def encode_page_token(score: int, run_id: str) -> str:
    return base64.urlsafe_b64encode(f"{score}:{run_id}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        score, run_id = raw.split(":", 1)
        if not is_run_id(run_id):
            raise ValueError(run_id)
        return int(score), run_id
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise BadPageToken(f"page_token {token[:64]!r} is not a token returned by ListRuns") from exc


class RunReader:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def graph_hashes(self, run_ids: Sequence[str]) -> dict[str, str | None]:
        """Graph hash of each run (None for unknown or expired runs), one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hget(keys.run_meta(run_id), "graph")
            values = await pipe.execute()
        return {r: (v.decode() if v else None) for r, v in zip(run_ids, values, strict=True)}

    async def status(self, run_id: str) -> str | None:
        value = await self.redis.hget(keys.run_meta(run_id), "status")
        return value.decode() if value else None

    async def run_result(self, run_id: str, *, inline_max_bytes: int) -> RunResultRead:
        """The run's meta (empty for an unknown or expired run) and, once it SUCCEEDED, its sinks'
        results when they total at most ``inline_max_bytes``: one round trip (run_result.lua)."""
        meta, inline, values = await scripts.RUN_RESULT.run(
            self.redis, [keys.run_meta(run_id), keys.results(run_id)], [inline_max_bytes]
        )
        results = [result_store_pb2.NodeResult.FromString(v) for v in values if v]
        return RunResultRead(_pairs(meta), inline == 1, results)

    async def get_run(self, run_id: str, plan_lookup: PlanLookup) -> scheduler_pb2.Run:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.run_meta(run_id))
            pipe.hgetall(keys.run_state(run_id))
            pipe.hgetall(keys.run_attempts(run_id))
            pipe.hgetall(keys.run_errors(run_id))
            pipe.hgetall(keys.run_cycles(run_id))
            pipe.hgetall(keys.run_dynamic(run_id))
            pipe.smembers(keys.run_children(run_id))
            pipe.hgetall(keys.run_waits(run_id))
            meta, states, attempts, errors, cycles, dynamic, children, waits = await pipe.execute()
        if not meta:
            raise RunNotFound(run_id)
        run = run_from_meta(run_id, meta)
        run.child_run_ids.extend(sorted(child.decode() for child in children))
        plan = await plan_lookup(run.graph_hash)
        add_nodes(run, states, attempts, errors, plan, cycles, dynamic_summaries(dynamic))
        waiting = {k[1:].decode(): v.decode() for k, v in waits.items() if k.startswith(b"@")}
        for node in run.nodes:
            if node.state == common_pb2.NODE_STATE_WAITING:
                node.waiting_for = waiting.get(node.node_id, "")
        return run

    async def list_runs(
        self, *, limit: int, status: str | None, page_token: str, filters: RunFilters = NO_FILTERS
    ) -> tuple[list[scheduler_pb2.Run], str]:
        """Runs newest first (without nodes), optionally with one status and ``filters``, and the
        next token. A status pages that status's index (keys.runs_by_status) and a time window is
        a range of the index's scores (created ms), so neither scans; a workflow name or labels
        are checked on each run's meta, examining at most ``max(limit * 20, 1000)`` runs per call:
        a page may then be short, even empty, with a next token (the contract says so)."""
        cursor = decode_page_token(page_token) if page_token else None
        index = keys.runs_index if status is None else functools.partial(_status_index, status=status)
        # Filtered, a run is first read by the fields the filters need (HMGET), and only a kept
        # one whole (HGETALL): a label that one run in ten carries reads ten runs' fields a run.
        filtering = status is not None or filters.on_meta
        runs: list[scheduler_pb2.Run] = []
        kept: list[str] = []
        scanned, max_scan = 0, max(limit * 20, 1000)
        while len(runs) + len(kept) < limit and scanned < max_scan:
            count = max(limit, SCAN_BATCH) if filters.on_meta else limit - len(runs) - len(kept)
            candidates = await self._page(index, cursor, count, filters)
            if not candidates:
                cursor = None
                break
            async with self.redis.pipeline(transaction=False) as pipe:
                for run_id, _score in candidates:
                    if filtering:
                        pipe.hmget(keys.run_meta(run_id), FILTERED_FIELDS)
                    else:
                        pipe.hgetall(keys.run_meta(run_id))
                replies = await pipe.execute()
            for (run_id, score), reply in zip(candidates, replies, strict=True):
                cursor = (score, run_id)
                scanned += 1
                if not filtering:
                    if reply:  # else expired; the sweep prunes the index
                        runs.append(run_from_meta(run_id, reply))
                elif filters.matches(reply, status):
                    kept.append(run_id)
                if len(runs) + len(kept) == limit:
                    break
        if kept:
            async with self.redis.pipeline(transaction=False) as pipe:
                for run_id in kept:
                    pipe.hgetall(keys.run_meta(run_id))
                metas = await pipe.execute()
            runs = [run_from_meta(run_id, meta) for run_id, meta in zip(kept, metas, strict=True) if meta]
        return runs, encode_page_token(*cursor) if cursor else ""

    async def count_runs(self) -> tuple[dict[str, int], int]:
        """Retained runs by status, and all of them: a ZCARD of each status's index and of the
        listing, per cell, in one pipeline (O(1) each, whatever the number of runs). The indexes
        are kept by the run scripts with each status change, so no counter can drift from them;
        runs whose state expired are counted until the recovery sweep prunes them (as ListRuns
        lists them until then)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for cell in keys.cells():
                pipe.zcard(keys.runs_index(cell))
                for status in keys.RUN_STATUSES:
                    pipe.zcard(keys.runs_by_status(cell, status))
            replies = await pipe.execute()
        width = len(keys.RUN_STATUSES) + 1
        total = sum(replies[::width])
        counts = {
            status: sum(replies[offset + 1 :: width]) for offset, status in enumerate(keys.RUN_STATUSES)
        }
        return counts, total

    async def _page(
        self, index: Callable[[int], str], cursor: tuple[int, str] | None, count: int, filters: RunFilters
    ) -> list[tuple[str, int]]:
        """Up to ``count`` (run id, created ms) after ``cursor`` in newest-first order (created ms,
        then id, descending), over the cells' ``index`` (keys.runs_index, or a status's), within
        the filters' time window: each cell's next ``count`` in one pipeline, merged. The cursor
        is a position in that order, whichever cell its run is in, so a page token pages every
        cell correctly."""
        newest_first: dict[str, Any] = {"desc": True, "byscore": True, "withscores": True}
        low = filters.created_after_ms or "-inf"
        high = filters.created_before_ms - 1 if filters.created_before_ms else "+inf"
        async with self.redis.pipeline(transaction=False) as pipe:
            for cell in keys.cells():
                if cursor is None:
                    pipe.zrange(index(cell), high, low, **newest_first, offset=0, num=count)
                else:
                    # Runs created in the same millisecond sort by id, descending in this order.
                    pipe.zrange(index(cell), cursor[0], cursor[0], **newest_first)
                    pipe.zrange(index(cell), f"({cursor[0]}", low, **newest_first, offset=0, num=count)
            replies = await pipe.execute()
        rows = [(m.decode(), int(s)) for reply in replies for m, s in reply]
        # (A token made with another window may point outside this one.)
        rows = [row for row in rows if filters.in_window(row[1])]
        if cursor is not None:
            score, last_id = cursor
            rows = [(run_id, created) for run_id, created in rows if created < score or run_id < last_id]
        rows.sort(key=lambda row: (row[1], row[0]), reverse=True)
        return rows[:count]

    async def read_events(
        self, run_id: str, after: str, *, count: int, block_ms: int | None = None
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Event entries after ``after`` (exclusive; "0-0" = from the start)."""
        response = await self.redis.xread({keys.run_events(run_id): after}, count=count, block=block_ms)
        if not response:
            return []
        return list(response[0][1])

    async def last_events(
        self, run_id: str, after: str, *, count: int
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Up to ``count`` of the newest event entries after ``after`` (exclusive), newest first."""
        low = "-" if after == "0-0" else f"({after}"
        return list(await self.redis.xrevrange(keys.run_events(run_id), "+", low, count=count))

    async def active_run_ids(self) -> list[str]:
        """The runs not ended, of every cell."""
        return [
            member.decode()
            for cell in keys.cells()
            async for member in self.redis.sscan_iter(keys.active_runs(cell), count=1000)
        ]

    async def ready_runs(self, run_ids: Sequence[str]) -> tuple[list[ReadyRun], list[str]]:
        """READY nodes of each run, and the ids among ``run_ids`` whose state is gone."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hmget(keys.run_meta(run_id), ["graph", "status"])
                pipe.hgetall(keys.run_state(run_id))
                pipe.hgetall(keys.run_attempts(run_id))
            values = await pipe.execute()
        ready_runs: list[ReadyRun] = []
        gone: list[str] = []
        for index, run_id in enumerate(run_ids):
            (graph, status), states, attempts = values[3 * index : 3 * index + 3]
            if graph is None:
                gone.append(run_id)
                continue
            if status not in (b"RUNNING", b"PAUSED"):
                continue
            ready = tuple(
                (node.decode(), int(attempts.get(node, b"1")))
                for node, state in states.items()
                if state == b"READY"
            )
            if ready:
                ready_runs.append(ReadyRun(run_id=run_id, graph_hash=graph.decode(), ready=ready))
        if ready_runs:
            async with self.redis.pipeline(transaction=False) as pipe:
                for ready_run in ready_runs:
                    pipe.hmget(keys.run_joins(ready_run.run_id), [f"{n}:lost" for n, _ in ready_run.ready])
                counts = await pipe.execute()
            for ready_run, values in zip(ready_runs, counts, strict=True):
                ready_run.lost.update(
                    {node: int(v) for (node, _), v in zip(ready_run.ready, values, strict=True) if v}
                )
            await self._add_cycles(ready_runs)
        return ready_runs, gone

    async def _add_cycles(self, ready_runs: Sequence[ReadyRun]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for ready_run in ready_runs:
                pipe.hgetall(keys.run_cycles(ready_run.run_id))
            all_cycles = await pipe.execute()
        for ready_run, raw in zip(ready_runs, all_cycles, strict=True):
            for node_id, _attempt in ready_run.ready:
                cycle, data = raw.get(node_id.encode()), raw.get(f"{node_id}:data".encode())
                answers = raw.get(f"{node_id}:fb".encode())
                if cycle or data or answers:
                    ready_run.cycles[node_id] = NodeCycle(int(cycle or 0), data or b"", answers or b"")

    async def forget(self, run_ids: Sequence[str]) -> None:
        """Drop runs whose state expired from the active set."""
        by_cell: dict[int, list[str]] = {}
        for run_id in run_ids:
            by_cell.setdefault(keys.cell_of(run_id), []).append(run_id)
        for cell, forgotten in by_cell.items():
            await self.redis.srem(keys.active_runs(cell), *forgotten)

    async def repair_status_indexes(self, cell: int, offset: int, count: int) -> tuple[int, int]:
        """Put the ``count`` runs from rank ``offset`` of the cell's listing in the status index
        their meta names, and out of the others (repair_status.lua, atomic per batch). Schedulers
        from before the status indexes end and pause runs without moving them, so the indexes
        (ListRuns' status filter, CountRuns) drift while such replicas run; the recovery sweep
        walks the listing a batch per pass. Returns (the offset of the next batch, 0 after the
        listing's end; the number of index entries fixed)."""
        members = await self.redis.zrange(keys.runs_index(cell), offset, offset + count - 1)
        if not members:
            return 0, 0
        run_ids = [m.decode() for m in members]
        names = [
            *(keys.runs_by_status(cell, status) for status in keys.RUN_STATUSES),
            *(keys.run_meta(run_id) for run_id in run_ids),
        ]
        args = [len(keys.RUN_STATUSES), *keys.RUN_STATUSES, *run_ids]
        fixed = int(await scripts.REPAIR_STATUS.run(self.redis, names, args))
        return (offset + len(run_ids) if len(run_ids) == count else 0), fixed

    async def prune_index(self, created_before_ms: int, *, batch: int = 1000) -> int:
        """Remove listing entries of runs created before ``created_before_ms`` whose state has
        expired (a run is kept for the retention period after it ended), in the listing of every
        cell (and from the cell's status indexes). Every such entry is examined, ``batch`` at a
        time: runs still kept (live for long, or ended less than a retention ago) are stepped
        over, so they never hold back the others' pruning, and the pruning keeps up with any
        rate of runs (it once stopped at the ``batch`` oldest entries per sweep: the listing grew
        without bound behind ``batch`` long-lived runs, or above ``batch`` runs per sweep
        period)."""
        pruned = 0
        for cell in keys.cells():
            status_indexes = [keys.runs_by_status(cell, status) for status in keys.RUN_STATUSES]
            pruned += await self._prune_cell(keys.runs_index(cell), status_indexes, created_before_ms, batch)
        return pruned

    async def _prune_cell(
        self, index: str, status_indexes: Sequence[str], created_before_ms: int, batch: int
    ) -> int:
        pruned = kept = 0
        while True:
            old = await self.redis.zrange(index, 0, created_before_ms, byscore=True, offset=kept, num=batch)
            if not old:
                return pruned
            async with self.redis.pipeline(transaction=False) as pipe:
                for member in old:
                    pipe.exists(keys.run_meta(member.decode()))
                exists = await pipe.execute()
            gone = [m for m, present in zip(old, exists, strict=True) if not present]
            if gone:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.zrem(index, *gone)
                    for status_index in status_indexes:
                        pipe.zrem(status_index, *gone)
                    await pipe.execute()
            pruned += len(gone)
            kept += len(old) - len(gone)
            if len(old) < batch:
                return pruned
