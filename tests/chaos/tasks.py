"""Task functions of the chaos tests (registered beside tests.e2e.tasks in the workers).

Faults are timed with task-level control only, never with test code paths in the services: a task
records that it started (``RPUSH started:<run>:<node> "<worker> <attempt>"``) and can then block on
a *gate*, a key in the effects Redis that the test sets when the fault is in place
(``gate:<name>`` opens it for every worker, ``gate:<name>:<worker id>`` for one worker only).
Side effects are recorded as in tests.e2e.tasks (``INCR effects:<run>:<node>``); the effects Redis
(``GRAFLOW_TEST_EFFECTS_URL``) is a server of its own in the chaos tests, so restarting the
stack's Redis never touches what the tests measure.
"""

from __future__ import annotations

import os
import time

from graflow import RetryPolicy, TaskContext, Workflow, task, workflow
from tests.e2e.tasks import effects, record, source

# A gate that is never opened fails the task (and so the test) instead of hanging it.
GATE_TIMEOUT_S = float(os.environ.get("GRAFLOW_TEST_GATE_TIMEOUT_S", "50"))
GATE_POLL_S = 0.01
# Longer than the coordinator's lease in the chaos stacks (1.5 s, conftest.LIVENESS).
LATE_RETRY_INTERVAL_S = 3.0


def mark(kind: str, ctx: TaskContext) -> None:
    effects().rpush(f"{kind}:{ctx.run_id}:{ctx.node_id}", f"{ctx.worker_id} {ctx.attempt}")


def wait_gate(ctx: TaskContext, gate: str) -> None:
    names = [f"gate:{gate}", f"gate:{gate}:{ctx.worker_id}"]
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while not effects().exists(*names):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate!r} was not opened within {GATE_TIMEOUT_S}s")
        time.sleep(GATE_POLL_S)


@task(inject_context=True)
def chaos_hold(
    ctx: TaskContext, gate: str, value: int = 1, effect_first: bool = False, **upstream: int
) -> int:
    """Marks its start, then waits for ``gate``; records its effect before waiting when
    ``effect_first``, after it otherwise. Returns ``value`` plus the int results upstream."""
    mark("started", ctx)
    if effect_first:
        record(ctx)
    wait_gate(ctx, gate)
    if not effect_first:
        record(ctx)
    mark("done", ctx)
    return value + sum(v for v in upstream.values() if isinstance(v, int))


@task(inject_context=True)
def chaos_in_order(ctx: TaskContext, gate: str) -> int:
    """Marks its start and appends ``"<node> <attempt>"`` to ``order:<run>`` (the order in which the
    run's bodies started, over every worker), then waits for ``gate``. Returns its attempt."""
    mark("started", ctx)
    effects().rpush(f"order:{ctx.run_id}", f"{ctx.node_id} {ctx.attempt}")
    wait_gate(ctx, gate)
    return ctx.attempt


@task(inject_context=True)
def chaos_step(ctx: TaskContext, i: int, seconds: float = 0.0) -> int:
    """Records its effect, takes ``seconds``, returns ``i``."""
    record(ctx)
    if seconds:
        time.sleep(seconds)
    return i


@task(
    inject_context=True,
    retry=RetryPolicy(max_attempts=3, initial_interval=LATE_RETRY_INTERVAL_S, backoff_factor=1.0, jitter=0),
)
def chaos_late_retry(ctx: TaskContext, fail_times: int = 1) -> int:
    """Fails its first ``fail_times`` attempts; the retry waits longer than the reclaim lease."""
    record(ctx)
    mark("attempts", ctx)
    if ctx.attempt <= fail_times:
        raise ConnectionError(f"transient failure on attempt {ctx.attempt}")
    return ctx.attempt


@task(inject_context=True)
def chaos_checkpointed(ctx: TaskContext, gate: str, steps: int = 6, hold_after: int = 3) -> int:
    """Long work in ``steps`` steps, each counted in ``steps:<run>:<node>:<n>`` and checkpointed
    (``{"done": n}``); an execution resumes after the last checkpointed step and records where it
    resumed (``RPUSH resumed:<run>:<node> <steps already done>``). When it runs step
    ``hold_after`` it then marks ``holding`` and waits for ``gate``. Records its effect at the end
    and returns the number of steps it found done when it started."""
    mark("started", ctx)
    resumed_from = int(ctx.restore({"done": 0})["done"])
    effects().rpush(f"resumed:{ctx.run_id}:{ctx.node_id}", resumed_from)
    for step in range(resumed_from + 1, steps + 1):
        effects().incr(f"steps:{ctx.run_id}:{ctx.node_id}:{step}")
        ctx.checkpoint({"done": step})
        if step == hold_after:
            mark("holding", ctx)
            wait_gate(ctx, gate)
    record(ctx)
    return resumed_from


def held_child(gate: str, value: int = 1) -> Workflow:
    """The child run of :func:`chaos_spawn_held`: ``a`` (source ``value``) ``>> held``
    (chaos_hold on ``gate``, value 1); its result is ``value + 1``."""
    with workflow("held-child") as wf:
        source(task_id="a", value=value) >> chaos_hold(task_id="held", gate=gate, value=1)
    return wf


@task(inject_context=True)
def chaos_spawn_held(ctx: TaskContext, gate: str, value: int = 1, **upstream: int) -> int:
    """Runs :func:`held_child` as a child run and waits for it (the node parks WAITING while the
    child's ``held`` waits for ``gate``); records its effect once the child's result is in and
    returns it times 10 plus the int results upstream."""
    child = ctx.run_child(held_child(gate, value), labels={"parent_node": ctx.node_id})
    record(ctx)
    return child * 10 + sum(v for v in upstream.values() if isinstance(v, int))
