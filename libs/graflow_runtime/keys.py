"""The Redis key layout, in one place (docs/architecture.md explains each key).

Keys of one run share the hash tag ``{run_id}`` so that Redis Cluster keeps a run on one shard.
Each service owns its keys: the scheduler ``run:*`` and the outcome stream, the coordinator the
workers, dead letters and the queues' administration (trimming, reclaims, replays), the
result-store ``res``/``chan``/``graph``. Nobody writes another service's keys, with two exceptions
(issue 13):
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

PREFIX = "gf"

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


# Priority lanes (docs/architecture.md, "Priority lanes"): every queue is two streams, each with
# the group WORKER_GROUP. Workers read the high lane first. Attempts that replace one lost with its
# worker, and envelopes with priority > 0, are appended to the high lane; everything else to the
# normal lane. The high lane's prefix is not "gf:q:", so no queue name can produce its key.
HIGH_LANE = "high"


def queue_stream(queue: str) -> str:
    """The queue's normal lane."""
    return f"{PREFIX}:q:{queue}"


def queue_high_stream(queue: str) -> str:
    """The queue's high lane."""
    return f"{PREFIX}:qh:{queue}"


def queue_lanes(queue: str) -> tuple[str, str]:
    """Both streams of ``queue`` in the order workers read them: high lane, normal lane."""
    return queue_high_stream(queue), queue_stream(queue)


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


def idempotency(key: str) -> str:
    return f"{PREFIX}:idem:{key}"


def run_meta(run_id: str) -> str:
    return f"{PREFIX}:run:{{{run_id}}}"


def run_state(run_id: str) -> str:
    """hash node_id -> state name."""
    return f"{PREFIX}:run:{{{run_id}}}:state"


def run_attempts(run_id: str) -> str:
    """hash node_id -> current attempt."""
    return f"{PREFIX}:run:{{{run_id}}}:attempt"


def run_joins(run_id: str) -> str:
    """hash "<node>:ok" / "<node>:fail" -> counts of finished upstream nodes; "<node>:lost" ->
    attempts of the node lost with their worker (redelivered without using the retry budget)."""
    return f"{PREFIX}:run:{{{run_id}}}:join"


def run_errors(run_id: str) -> str:
    """hash node_id -> ErrorInfo bytes of the last failure."""
    return f"{PREFIX}:run:{{{run_id}}}:errors"


def run_events(run_id: str) -> str:
    """stream of the run's event history (watch cursor = entry id)."""
    return f"{PREFIX}:run:{{{run_id}}}:events"


def run_keys(run_id: str) -> list[str]:
    return [run_meta(run_id), run_state(run_id), run_attempts(run_id), run_joins(run_id),
            run_errors(run_id), run_events(run_id)]


def run_dynamic(run_id: str) -> str:
    """hash node_id -> spec JSON of a node added at run time (ctx.next_task), plus '#'-prefixed
    bookkeeping fields (id counters, max cycles, nodes released per applied outcome)."""
    return f"{PREFIX}:run:{{{run_id}}}:dyn"


def run_cycles(run_id: str) -> str:
    """hash node_id -> current cycle (re-runs); "<node>:data" -> JSON data of next_iteration;
    "<node>:fb" -> FeedbackResponses bytes: the answers to the node's requests in this cycle."""
    return f"{PREFIX}:run:{{{run_id}}}:cycle"


def run_waits(run_id: str) -> str:
    """hash wait id -> what a WAITING node waits for (FeedbackRequest bytes, or a child run id);
    "<wait id>:r" -> FeedbackResponse bytes of an answered request; "@<node>" -> the wait id the
    node waits on now."""
    return f"{PREFIX}:run:{{{run_id}}}:waits"


def run_children(run_id: str) -> str:
    """set of the child run ids started by the run's tasks."""
    return f"{PREFIX}:run:{{{run_id}}}:children"


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
    return f"{PREFIX}:dispatch:{{{run_id}}}"


# ---- coordinator ----
WORKERS_INDEX = f"{PREFIX}:workers"  # zset worker_id -> last heartbeat ms


def worker_info(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"


# ---- result-store ----
def results(run_id: str) -> str:
    """hash node_id -> NodeResult bytes (highest attempt wins, fenced by :func:`result_attempts`).
    Written by the result-store (PutResults) and, for results carried inline in an outcome, by the
    scheduler's apply_outcome.lua; the scheduler reads a run's sinks from it to answer WaitRun
    (run_result.lua)."""
    return f"{PREFIX}:res:{{{run_id}}}"


def result_attempts(run_id: str) -> str:
    """hash node_id -> attempt of the result stored in :func:`results`: a result is written only
    when no later attempt of its node stored one (Lua can't read the attempt out of the bytes)."""
    return f"{results(run_id)}:attempt"


def channel(run_id: str) -> str:
    """hash key -> Payload bytes."""
    return f"{PREFIX}:chan:{{{run_id}}}"


def checkpoints(run_id: str) -> str:
    """hash node_id -> Payload bytes of the node's last ``ctx.checkpoint(state)``."""
    return f"{PREFIX}:ckpt:{{{run_id}}}"


def graph(graph_hash: str) -> str:
    return f"{PREFIX}:graph:{graph_hash}"
