"""Deliveries of READY nodes: task envelopes built from the plan. The scheduler enqueues them
itself, a batch per round trip (graflow_runtime.dispatch, the mechanism the coordinator's
``Dispatch`` RPC runs too), deduplicated by (run, node, attempt), so dispatching the same attempt
again is always safe."""

from __future__ import annotations

from collections.abc import Mapping

from graflow_api.v1 import coordinator_pb2, feedback_pb2, messages_pb2
from graflow_runtime.telemetry import inject_trace_context

from graflow_scheduler.graph.plan import Plan, TaskData


def delivery(
    plan: Plan,
    run_id: str,
    node_id: str,
    attempt: int,
    *,
    delay_ms: int = 0,
    trace_context: Mapping[str, str] | None = None,
    lost_attempts: int = 0,
    task: TaskData | None = None,
    cycle: int = 0,
    iteration_data_json: bytes = b"",
    feedback: bytes = b"",
    replaces_lost_attempt: bool = False,
) -> coordinator_pb2.Delivery:
    """The delivery of ``attempt`` of task node ``node_id``. ``trace_context``: the W3C context the
    task continues (the outcome that released it); the current context when empty.
    ``lost_attempts``: earlier attempts lost with their worker (the coordinator's poison count).
    ``task``: the node's task data when it is not in the plan (added at run time); ``cycle`` and
    ``iteration_data_json``: its re-run and the data of ctx.next_iteration; ``feedback``: the answers
    to its feedback requests in this cycle (FeedbackResponses bytes); ``replaces_lost_attempt``: the
    previous attempt was lost with its worker (dispatch appends it to the queue's high lane)."""
    task = task or plan.task(node_id)
    envelope = messages_pb2.TaskEnvelope(
        run_id=run_id,
        node_id=node_id,
        task_type=task.task_type,
        attempt=attempt,
        args_json=task.args_json,
        input_node_ids=task.input_node_ids,
        timeout_ms=task.timeout_ms,
        queue=task.queue,
        priority=task.priority,
        max_attempts=task.retry.max_attempts,
        lost_attempts=lost_attempts,
        cycle=cycle,
        max_cycles=task.max_cycles,
        iteration_data_json=iteration_data_json,
    )
    if feedback:
        envelope.feedback.extend(feedback_pb2.FeedbackResponses.FromString(feedback).responses)
    if trace_context:
        envelope.trace_context.update(trace_context)
    else:
        inject_trace_context(envelope.trace_context)
    return coordinator_pb2.Delivery(
        envelope=envelope, delay_ms=delay_ms, replaces_lost_attempt=replaces_lost_attempt
    )
