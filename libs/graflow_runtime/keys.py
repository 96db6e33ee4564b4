"""The Redis key layout, in one place (docs/architecture.md explains each key).

Cells (docs/architecture.md, "Redis Cluster: cells"). The keyspace is split into ``cells``: each
cell is a complete copy of the run-scoped layout (the run keys, the queue lanes, the outcome
stream, the dispatch records, the retry timer, the dead letters, the ended-runs stream and the run
indexes), and every key of a cell carries the cell's hash tag, so a cell lives in one Redis
Cluster slot and every Lua script or ``MULTI`` of the engine touches one cell only. A run belongs
to one cell for its whole life (:func:`cell_of`: a hash of its id); a child run is created in its
parent's cell and a run submitted with an idempotency key in that key's cell
(graflow_runtime.runids.new_run_id). Cells spread over a cluster's primaries by slot: cell ``i``
of ``n`` has a tag whose slot lies in the ``i``-th of ``n`` equal slot ranges.

The layout is process-wide and set once at start-up, before any key is named, by
:func:`configure` (``graflow_runtime.service`` from the ``REDIS_CELLS`` and ``REDIS_CLUSTER``
settings); every process of a deployment must use the same one (``gf:layout`` records it, and a
process with another one refuses to start). The default, one untagged cell, names every key as
the single-Redis layout always did (``gf:outcomes``, ``gf:run:{R}``...). The module constants
below are that default layout's names, for tools and tests that run with it; code that may run
with several cells names its keys through the functions.

Each service owns its keys: the scheduler ``run:*`` and the outcome stream, the coordinator the
workers, dead letters and the queues' administration (trimming, reclaims, replays), the
result-store ``res``/``chan``/``graph``. Nobody writes another service's keys, with two exceptions
(issue 13):
- the audit stream (:data:`AUDIT_STREAM`) is appended to by every API server's auth layer
  (graflow_runtime.audit) and read by the coordinator;
- the dispatch keys (queue streams, dispatch records, the retry timer and its wake-up stream) are
  written by graflow_runtime.dispatch, which the scheduler runs for its own deliveries and the
  coordinator for its ``Dispatch`` RPC; the coordinator's retry timer moves ``gf:retry`` to the
  queues, workers read and acknowledge them (docs/architecture.md, "Dispatch");
- the scheduler stores the small results that workers carry inline in their outcomes in the
  result-store's ``res`` hashes (:func:`results`, :func:`result_attempts`), in the script that
  applies the outcome (docs/architecture.md, "Data path"). The result-store still owns their
  layout and serves every read.
"""

from __future__ import annotations

import binascii
import functools
from dataclasses import dataclass

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

PREFIX = "gf"
# At most this many cells (a cell is a slot: more than a cluster has primaries many times over).
MAX_CELLS = 1024
# The layout the deployment uses, written by the first process that starts and checked by the
# others (graflow_runtime.service): "cells=<n> tagged=<0|1>".
LAYOUT_KEY = f"{PREFIX}:layout"


@dataclass(frozen=True)
class Layout:
    """How the keyspace is cut: ``cells`` cells, tagged with Redis Cluster hash tags when the
    Redis is a cluster or there is more than one cell (so a test of several cells on one Redis
    names exactly the keys a cluster would)."""

    cells: int = 1
    cluster: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.cells <= MAX_CELLS:
            raise ValueError(f"cells must be between 1 and {MAX_CELLS}, not {self.cells}")

    @property
    def tagged(self) -> bool:
        return self.cluster or self.cells > 1

    def describe(self) -> str:
        """What :data:`LAYOUT_KEY` holds for this layout (the cluster flag is not part of it: the
        same keys serve a cluster and a single Redis)."""
        return f"cells={self.cells} tagged={int(self.tagged)}"

    @functools.cached_property
    def prefixes(self) -> tuple[str, ...]:
        """The key prefix of each cell: ``gf`` untagged, else ``gf:{<tag>}``."""
        if not self.tagged:
            return (PREFIX,)
        return tuple(f"{PREFIX}:{{{cell_tag(cell, self.cells)}}}" for cell in range(self.cells))

    @property
    def global_prefix(self) -> str:
        """The prefix of structures outside the cells that a script touches several keys of (the
        worker registry): one fixed tag when tagged, so they share a slot."""
        return f"{PREFIX}:{{{PREFIX}}}" if self.tagged else PREFIX


def cell_tag(cell: int, cells: int) -> str:
    """The shortest ``c<cell>.<n>`` whose Redis Cluster slot lies in the ``cell``-th of ``cells``
    equal slot ranges (a cluster assigns primaries contiguous ranges, so cells spread evenly)."""
    low = cell * REDIS_CLUSTER_HASH_SLOTS // cells
    high = (cell + 1) * REDIS_CLUSTER_HASH_SLOTS // cells
    n = 0
    while not low <= key_slot(f"c{cell}.{n}".encode()) < high:
        n += 1
    return f"c{cell}.{n}"


_layout = Layout()


def configure(layout: Layout) -> None:
    """Set the process's layout (at start-up, before any key is named)."""
    global _layout  # noqa: PLW0603 - one layout per process, like its logging configuration
    _layout = layout


def layout() -> Layout:
    return _layout


def cells() -> range:
    """Every cell, for the loops and readers that cover them all."""
    return range(_layout.cells)


def _hash(text: str) -> int:
    return binascii.crc32(text.encode("utf-8"))


def cell_of(run_id: str) -> int:
    """The cell of a run (of its id)."""
    return _hash(run_id) % _layout.cells if _layout.cells > 1 else 0


def cell_of_idempotency_key(key: str) -> int:
    """The cell a run submitted with idempotency key ``key`` (and no parent) is created in."""
    return _hash(key) % _layout.cells if _layout.cells > 1 else 0


def _cell(cell: int) -> str:
    return _layout.prefixes[cell]


def _run(run_id: str) -> str:
    return _layout.prefixes[cell_of(run_id)]


# ---- streams shared through the bus ----
OUTCOMES_STREAM = f"{PREFIX}:outcomes"
SCHEDULER_GROUP = "scheduler"
WORKER_GROUP = "workers"
DEAD_LETTERS_STREAM = f"{PREFIX}:deadletters"
# Stream fields: envelope bytes in queue streams, outcome bytes in the outcome stream.
ENVELOPE_FIELD = b"e"
# Beside the envelope, when the coordinator enqueued it at once: the id of the last entry of
# RUNS_ENDED at that moment, while the run was live (it checked, in the same script). Any later end
# of the run has a greater id, so a worker that has read RUNS_ENDED from before this id knows
# whether the run ended without asking Redis (docs/architecture.md, "Ended runs").
ENDED_CURSOR_FIELD = b"c"
OUTCOME_FIELD = b"o"


# The queue names in use (a set): graflow_runtime.queues registers each one before its streams are
# made, at most graflow_runtime.limits.MAX_QUEUES of them.
QUEUES = f"{PREFIX}:queues"


# Priority lanes (docs/architecture.md, "Priority lanes"): every queue is two streams, each with
# the group WORKER_GROUP. Workers read the high lane first. Attempts that replace one lost with its
# worker, and envelopes with priority > 0, are appended to the high lane; everything else to the
# normal lane. The high lane's prefix is not "gf:q:", so no queue name can produce its key.
HIGH_LANE = "high"


def queue_stream(queue: str, cell: int = 0) -> str:
    """The queue's normal lane in ``cell``."""
    return f"{_cell(cell)}:q:{queue}"


def queue_high_stream(queue: str, cell: int = 0) -> str:
    """The queue's high lane in ``cell``."""
    return f"{_cell(cell)}:qh:{queue}"


def queue_lanes(queue: str, cell: int = 0) -> tuple[str, str]:
    """Both streams of ``queue`` in ``cell``, in the order workers read them: high lane, normal lane."""
    return queue_high_stream(queue, cell), queue_stream(queue, cell)


def queue_lane_prefixes(cell: int) -> tuple[str, str]:
    """The key prefixes of the high and the normal lanes of ``cell`` (+ queue name = the key)."""
    return f"{_cell(cell)}:qh:", f"{_cell(cell)}:q:"


# ---- scheduler ----
RUNS_INDEX = f"{PREFIX}:runs"  # zset run_id -> created_at_ms
ACTIVE_RUNS = f"{PREFIX}:runs:active"  # set of run ids not yet ended
# zset "<run_id>/<request_id>" -> created_at_ms: feedback requests whose node waits for an answer.
FEEDBACK_PENDING = f"{PREFIX}:feedback:pending"
# zset "<run_id>/<wait_id>" -> deadline ms: waits with a timeout, due to the scheduler's wait timer.
WAIT_DEADLINES = f"{PREFIX}:waits:deadlines"
# zset child run id -> ended_at_ms: ended child runs whose parent node may wait for them.
CHILDREN_ENDED = f"{PREFIX}:children:ended"
# zset run id -> canceled_at_ms: canceled runs whose child runs are still to be canceled.
CHILDREN_TO_CANCEL = f"{PREFIX}:children:cancel"
# stream: one entry per run end, written by the scheduler's finish_run (common.lua, which caps it
# at ~100,000 entries) atomically with the end, fields RUN_ENDED_RUN_FIELD, RUN_ENDED_STATUS_FIELD;
# workers XREAD it to stop the ended runs' work (docs/architecture.md, "Cancellation reaching tasks").
RUNS_ENDED = f"{PREFIX}:ended"
RUN_ENDED_RUN_FIELD = b"r"
RUN_ENDED_STATUS_FIELD = b"s"
# Field of the run's meta hash (run_meta) holding the ms the run ended; "0" while it is live.
RUN_ENDED_AT_FIELD = "ended"


def idempotency(key: str, cell: int = 0) -> str:
    """The run id submitted with idempotency ``key``, in the run's cell."""
    return f"{_cell(cell)}:idem:{key}"


# ---- the cells' own indexes and streams (the constants above and below name cell 0 of the
# default layout) ----
def outcomes_stream(cell: int) -> str:
    return f"{_cell(cell)}:outcomes"


def dead_letters_stream(cell: int) -> str:
    return f"{_cell(cell)}:deadletters"


def runs_index(cell: int) -> str:
    return f"{_cell(cell)}:runs"


def active_runs(cell: int) -> str:
    return f"{_cell(cell)}:runs:active"


RUN_STATUSES = ("RUNNING", "PAUSED", "SUCCEEDED", "FAILED", "CANCELED")  # each has an index


def runs_by_status(cell: int, status: str) -> str:
    """zset run_id -> created ms of the cell's runs with ``status`` (ListRuns, CountRuns), moved by
    the run scripts (common.lua's status_index names it from :func:`active_runs`: keep in step)."""
    return f"{_cell(cell)}:runs:status:{status}"


def feedback_pending(cell: int) -> str:
    return f"{_cell(cell)}:feedback:pending"


def feedback_opened(cell: int) -> str:
    """Stream of the cell's new feedback requests, fields FEEDBACK_OPENED_RUN_FIELD and
    FEEDBACK_OPENED_REQUEST_FIELD: apply_outcome.lua appends one entry with the request it records
    (when the scheduler notifies a webhook), the scheduler's notifier reads it through the group
    FEEDBACK_NOTIFIER_GROUP (graflow_scheduler.notify)."""
    return f"{_cell(cell)}:feedback:opened"


FEEDBACK_OPENED_RUN_FIELD = b"r"
FEEDBACK_OPENED_REQUEST_FIELD = b"q"
FEEDBACK_NOTIFIER_GROUP = "notifier"


def wait_deadlines(cell: int) -> str:
    return f"{_cell(cell)}:waits:deadlines"


def children_ended(cell: int) -> str:
    return f"{_cell(cell)}:children:ended"


def children_to_cancel(cell: int) -> str:
    return f"{_cell(cell)}:children:cancel"


def runs_ended(cell: int) -> str:
    return f"{_cell(cell)}:ended"


def retry_timer(cell: int) -> str:
    return f"{_cell(cell)}:retry"


def retry_wake(cell: int) -> str:
    return f"{_cell(cell)}:retry:wake"


def run_meta(run_id: str) -> str:
    return f"{_run(run_id)}:run:{{{run_id}}}"


def run_state(run_id: str) -> str:
    """hash node_id -> state name."""
    return f"{run_meta(run_id)}:state"


def run_attempts(run_id: str) -> str:
    """hash node_id -> current attempt."""
    return f"{run_meta(run_id)}:attempt"


def run_joins(run_id: str) -> str:
    """hash "<node>:ok" / "<node>:fail" -> counts of finished upstream nodes; "<node>:lost" ->
    attempts of the node lost with their worker (redelivered without using the retry budget)."""
    return f"{run_meta(run_id)}:join"


def run_errors(run_id: str) -> str:
    """hash node_id -> ErrorInfo bytes of the last failure."""
    return f"{run_meta(run_id)}:errors"


def run_events(run_id: str) -> str:
    """stream of the run's event history (watch cursor = entry id)."""
    return f"{run_meta(run_id)}:events"


def run_keys(run_id: str) -> list[str]:
    return [run_meta(run_id), run_state(run_id), run_attempts(run_id), run_joins(run_id),
            run_errors(run_id), run_events(run_id)]


def run_dynamic(run_id: str) -> str:
    """hash node_id -> spec JSON of a node added at run time (ctx.next_task), plus '#'-prefixed
    bookkeeping fields (id counters, max cycles, nodes released per applied outcome)."""
    return f"{run_meta(run_id)}:dyn"


def run_cycles(run_id: str) -> str:
    """hash node_id -> current cycle (re-runs); "<node>:data" -> JSON data of next_iteration;
    "<node>:fb" -> FeedbackResponses bytes: the answers to the node's requests in this cycle."""
    return f"{run_meta(run_id)}:cycle"


def run_waits(run_id: str) -> str:
    """hash wait id -> what a WAITING node waits for (FeedbackRequest bytes, or a child run id);
    "<wait id>:r" -> FeedbackResponse bytes of an answered request; "@<node>" -> the wait id the
    node waits on now."""
    return f"{run_meta(run_id)}:waits"


def run_children(run_id: str) -> str:
    """set of the child run ids started by the run's tasks."""
    return f"{run_meta(run_id)}:children"


def run_flow_keys(run_id: str) -> list[str]:
    """Keys of a run's dynamic control flow and waits (created on first use, expire with the run)."""
    return [run_dynamic(run_id), run_cycles(run_id), run_waits(run_id), run_children(run_id)]


# ---- dispatch (graflow_runtime.dispatch: the scheduler and the coordinator's Dispatch) ----
# zset, score = due ms, member = "<queue>\n<envelope bytes>" (normal lane) or
# "<queue> high\n<envelope bytes>" (HIGH_LANE; queue names hold no whitespace); a signed envelope's
# head also names its signature, "<queue>[ high] sig=<key id>:<hmac hex>" (retry_head).
RETRY_TIMER = f"{PREFIX}:retry"
RETRY_SIGNATURE_TOKEN = "sig="


def retry_head(queue: str, *, high: bool, key_id: bytes = b"", mac: bytes = b"") -> str:
    """The head of a retry timer member (before its first newline): queue, lane, signature."""
    head = f"{queue} {HIGH_LANE}" if high else queue
    if key_id:
        head += f" {RETRY_SIGNATURE_TOKEN}{key_id.decode()}:{mac.decode()}"
    return head


# stream (one entry kept): appended by dispatch when a delayed delivery is due earlier than every
# delivery the retry timer held, so that the timers (XREAD BLOCK on it) wake at once.
RETRY_WAKE = f"{PREFIX}:retry:wake"


def dispatch_record(run_id: str) -> str:
    """hash node_id -> highest attempt dispatched (makes dispatch idempotent)."""
    return f"{_run(run_id)}:dispatch:{{{run_id}}}"


# ---- audit (graflow_runtime.audit: every API server appends, the coordinator lists) ----
# Capped stream (XADD MAXLEN ~ AUDIT_MAXLEN) of mutating actions: who, what, when, from where.
AUDIT_STREAM = f"{PREFIX}:audit"


# ---- coordinator ----
WORKERS_INDEX = f"{PREFIX}:workers"  # zset worker_id -> last heartbeat ms


def workers_index() -> str:
    """zset worker_id -> last heartbeat ms (:data:`WORKERS_INDEX` in the default layout)."""
    return f"{_layout.global_prefix}:workers"


def worker_info(worker_id: str) -> str:
    return f"{_layout.global_prefix}:worker:{worker_id}"


# ---- result-store ----
def results(run_id: str) -> str:
    """hash node_id -> NodeResult bytes (highest attempt wins, fenced by :func:`result_attempts`).
    Written by the result-store (PutResults) and, for results carried inline in an outcome, by the
    scheduler's apply_outcome.lua; the scheduler reads a run's sinks from it to answer WaitRun
    (run_result.lua)."""
    return f"{_run(run_id)}:res:{{{run_id}}}"


def result_attempts(run_id: str) -> str:
    """hash node_id -> attempt of the result stored in :func:`results`: a result is written only
    when no later attempt of its node stored one (Lua can't read the attempt out of the bytes)."""
    return f"{results(run_id)}:attempt"


def channel(run_id: str) -> str:
    """hash key -> Payload bytes."""
    return f"{_run(run_id)}:chan:{{{run_id}}}"


def checkpoints(run_id: str) -> str:
    """hash node_id -> Payload bytes of the node's last ``ctx.checkpoint(state)``."""
    return f"{_run(run_id)}:ckpt:{{{run_id}}}"


def workflow_registry() -> tuple[str, str, str]:
    """The scheduler's workflow registry, three hashes under the global tag (put_workflow.lua
    writes them together): name -> RegisteredWorkflow bytes, the same without the spec's graph
    (ListWorkflows), and name -> version."""
    records = f"{_layout.global_prefix}:workflows"
    return records, f"{records}:list", f"{records}:version"


def metrics_lease(service: str) -> str:
    """The lease of the one replica of ``service`` that computes the fleet-wide gauges
    (graflow_runtime.fleet); a single key, outside the cells."""
    return f"{PREFIX}:metrics:lease:{service}"


def graph(graph_hash: str) -> str:
    return f"{PREFIX}:graph:{graph_hash}"
