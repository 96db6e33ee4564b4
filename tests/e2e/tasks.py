"""Task functions the end-to-end tests' workers register (GRAFLOW_WORKER_TASK_MODULES=tests.e2e.tasks).

Each task records its side effect in Redis (``INCR effects:<run>:<node>`` on the Redis named by
``GRAFLOW_TEST_EFFECTS_URL``), so tests can assert that every node's effect happened exactly once.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

import redis

from graflow import NonRetryableError, RetryPolicy, TaskContext, task

_client: redis.Redis | None = None


def effects() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["GRAFLOW_TEST_EFFECTS_URL"])
    return _client


def record(ctx: TaskContext) -> None:
    effects().incr(f"effects:{ctx.run_id}:{ctx.node_id}")


@task(inject_context=True)
def source(ctx: TaskContext, value: int = 1) -> int:
    record(ctx)
    return value


@task(inject_context=True)
def add_one(ctx: TaskContext, source: int) -> int:
    record(ctx)
    return source + 1


@task(inject_context=True)
def double(ctx: TaskContext, add_one: int) -> int:
    record(ctx)
    return add_one * 2


@task(inject_context=True)
def left(ctx: TaskContext, source: int) -> int:
    record(ctx)
    return source + 10


@task(inject_context=True)
async def right(ctx: TaskContext, source: int) -> int:
    record(ctx)
    await asyncio.sleep(0)
    return source + 100


@task(inject_context=True)
def join(ctx: TaskContext, left: int, right: int) -> dict[str, int]:
    record(ctx)
    return {"left": left, "right": right, "sum": left + right}


@task(inject_context=True)
def item(ctx: TaskContext, i: int) -> int:
    record(ctx)
    return i


@task(inject_context=True)
def collect(ctx: TaskContext, **upstream: int) -> dict[str, int]:
    record(ctx)
    return {"count": len(upstream), "total": sum(upstream.values())}


@task(inject_context=True)
def echo(ctx: TaskContext, payload: Any) -> Any:
    record(ctx)
    return {"echo": payload, "node": ctx.node_id}


@task(inject_context=True)
def blob(ctx: TaskContext, size: int) -> str:
    """A result of ``size`` characters (tests/e2e/wait_test.py: results too large to come inline)."""
    record(ctx)
    return "x" * size


@task(inject_context=True)
def pair(ctx: TaskContext, small: str, large: str) -> dict[str, str]:
    """Both upstream results, as received (tests/e2e/workflows_test.py: results inline or not)."""
    record(ctx)
    return {"small": small, "large": large}


@task(inject_context=True)
def lengths(ctx: TaskContext, b1: str, b2: str, b3: str, b4: str, b5: str) -> list[int]:
    """The lengths of five upstream results (tests/e2e/wait_test.py: inputs over the message limit)."""
    record(ctx)
    return [len(b1), len(b2), len(b3), len(b4), len(b5)]


@task(inject_context=True)
def explode(ctx: TaskContext, message: str = "boom") -> None:
    record(ctx)
    raise ValueError(message)


@task(inject_context=True, retry=RetryPolicy(max_attempts=3, initial_interval=0.05, jitter=0))
def flaky(ctx: TaskContext, fail_times: int = 2) -> int:
    """Fails its first ``fail_times`` attempts, then returns the attempt number."""
    record(ctx)
    if ctx.attempt <= fail_times:
        raise ConnectionError(f"transient failure on attempt {ctx.attempt}")
    return ctx.attempt


@task(inject_context=True, retry=RetryPolicy(max_attempts=5, initial_interval=0.05))
def refuse(ctx: TaskContext) -> None:
    record(ctx)
    raise NonRetryableError("bad input, retrying won't help")


@task(inject_context=True)
def slow(ctx: TaskContext, seconds: float = 0.5) -> float:
    record(ctx)
    time.sleep(seconds)
    return seconds


# ---- delivery guarantees (tests/e2e/delivery_test.py) ----
def mark_start(ctx: TaskContext) -> None:
    """``started:<run>:<node>:<attempt>`` = the pid of the worker process running the attempt."""
    effects().set(f"started:{ctx.run_id}:{ctx.node_id}:{ctx.attempt}", os.getpid())


@task(inject_context=True)
def gated(ctx: TaskContext, wait_s: float = 60.0) -> int:
    """Marks its start, waits until the test sets ``gate:<run>:<node>:<attempt>`` (at most
    ``wait_s``), records its effect and returns its attempt."""
    mark_start(ctx)
    deadline = time.monotonic() + wait_s
    gate = f"gate:{ctx.run_id}:{ctx.node_id}:{ctx.attempt}"
    while not effects().exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{gate} was not opened within {wait_s}s")
        time.sleep(0.02)
    record(ctx)
    return ctx.attempt


@task(inject_context=True)
def marked_sleep(ctx: TaskContext, seconds: float = 1.0) -> int:
    """Marks its start, sleeps, records its effect and returns its attempt."""
    mark_start(ctx)
    time.sleep(seconds)
    record(ctx)
    return ctx.attempt


@task(inject_context=True)
def crash_worker(ctx: TaskContext) -> None:
    """Kills the worker process running it, every time (a poison message)."""
    mark_start(ctx)
    os._exit(13)


@task(inject_context=True, retry=RetryPolicy(max_attempts=2, initial_interval=2.5, jitter=0))
def fail_then_retry_late(ctx: TaskContext) -> int:
    """Fails attempt 1; the retry waits 2.5 s, longer than the delivery tests' lease."""
    mark_start(ctx)
    record(ctx)
    if ctx.attempt == 1:
        raise ConnectionError("transient failure on attempt 1")
    return ctx.attempt


@task(inject_context=True, timeout=0.5, retry=RetryPolicy(max_attempts=2, initial_interval=0.05, jitter=0))
def overrun(ctx: TaskContext, seconds: float = 3.0) -> float:
    """Takes longer than its 0.5 s timeout."""
    record(ctx)
    time.sleep(seconds)
    return seconds


# ---- dynamic control flow and cancellation (tests/e2e/control_flow_test.py) ----
def note_order(ctx: TaskContext) -> None:
    """Appends the node id to ``order:<run>`` (the order in which nodes ran)."""
    effects().rpush(f"order:{ctx.run_id}", ctx.node_id)


@task(inject_context=True, max_cycles=10)
def refine_draft(ctx: TaskContext, data: dict[str, Any] | None = None) -> dict[str, int]:
    """Improves its score by 30 per cycle and iterates until the score reaches 90."""
    record(ctx)
    score = (data or {}).get("score", 0) + 30
    if score < 90 and ctx.can_iterate():
        ctx.next_iteration({"score": score})
    return {"score": score, "cycle": ctx.cycle_count}


@task(inject_context=True)
def publish_draft(ctx: TaskContext, refine_draft: dict[str, int]) -> str:
    record(ctx)
    return f"published with score {refine_draft['score']} after {refine_draft['cycle'] + 1} drafts"


@task(inject_context=True)
def agent_step(ctx: TaskContext, tool_calls: int = 3) -> dict[str, Any]:
    """An agent that calls a tool (a node added with goto) until it has ``tool_calls`` observations."""
    record(ctx)
    observations = ctx.channel.get("observations", [])
    if len(observations) < tool_calls:
        ctx.next_task(use_tool, goto=True, query=f"q{len(observations)}")
        return {"thinking": len(observations)}
    return {"answer": observations}


@task(inject_context=True)
def use_tool(ctx: TaskContext, query: str) -> str:
    """A tool: stores its observation for the agent and jumps back to it."""
    record(ctx)
    ctx.channel.set("observations", [*ctx.channel.get("observations", []), f"result of {query}"])
    ctx.goto("agent_step")
    return query


@task(inject_context=True)
def final_answer(ctx: TaskContext, agent_step: dict[str, Any]) -> dict[str, Any]:
    record(ctx)
    return {"final": agent_step["answer"]}


@task(inject_context=True)
def think(ctx: TaskContext, rounds: int = 3) -> int:
    """Head of a static loop ``think >> act >> think``: stops the run after ``rounds`` passes."""
    record(ctx)
    note_order(ctx)
    if ctx.cycle_count + 1 >= rounds:
        ctx.terminate_workflow(f"done after {ctx.cycle_count + 1} rounds")
    return ctx.cycle_count


@task(inject_context=True)
def act(ctx: TaskContext, think: int) -> int:
    record(ctx)
    note_order(ctx)
    return think * 10


@task(inject_context=True)
def ping(ctx: TaskContext, pong: int = 0) -> int:
    """With pong: a loop that never stops by itself."""
    record(ctx)
    return pong + 1


@task(inject_context=True)
def pong(ctx: TaskContext, ping: int) -> int:
    record(ctx)
    return ping + 1


@task(inject_context=True)
def expand(ctx: TaskContext, source: int) -> int:
    """Adds two nodes that run before its static successors."""
    record(ctx)
    note_order(ctx)
    ctx.next_task(ordered_item, i=source)
    ctx.next_task(ordered_item(task_id="extra", i=source + 1))
    return source


@task(inject_context=True)
def ordered_item(ctx: TaskContext, i: int, expand: int | None = None) -> int:
    record(ctx)
    note_order(ctx)
    return i * 100 + (expand or 0)


@task(inject_context=True)
def ordered_done(ctx: TaskContext, expand: int) -> str:
    record(ctx)
    note_order(ctx)
    return f"done after {expand}"


@task(inject_context=True)
def stop_here(ctx: TaskContext, source: int) -> int:
    record(ctx)
    ctx.terminate_workflow("enough for today")
    return source


@task(inject_context=True)
def give_up(ctx: TaskContext, source: int) -> int:
    record(ctx)
    ctx.cancel_workflow("the task gave up")
    return source


@task(inject_context=True, max_cycles=2)
def spin(ctx: TaskContext, data: dict[str, int] | None = None) -> int:
    """Iterates forever (its max_cycles stops it)."""
    record(ctx)
    ctx.next_iteration({"cycle": ctx.cycle_count})
    return ctx.cycle_count


@task(inject_context=True)
def cooperative_wait(ctx: TaskContext, seconds: float = 60.0) -> str:
    """Long work that checks for cancellation; marks ``running:<run>:<node>`` when it starts and
    ``observed:<run>:<node>`` when it saw its run canceled."""
    effects().set(f"running:{ctx.run_id}:{ctx.node_id}", 1)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ctx.is_canceled():
            effects().set(f"observed:{ctx.run_id}:{ctx.node_id}", 1)
            ctx.check_canceled()
        time.sleep(0.02)
    return "finished without being canceled"


@task(inject_context=True)
def fail_after(ctx: TaskContext, others: list[str], message: str = "member broke") -> None:
    """Fails once the scheduler recorded the nodes ``others`` of its run as SUCCEEDED (bounded
    wait; the tests' Redis is the stack's)."""
    deadline = time.monotonic() + 30
    state = f"gf:run:{{{ctx.run_id}}}:state"
    while not all(effects().hget(state, n) == b"SUCCEEDED" for n in others):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{others} did not run within 30s")
        time.sleep(0.02)
    record(ctx)
    raise ValueError(message)


# ---- channels and checkpoints (channels_test.py) ----
@dataclass
class ChannelNote:
    author: str
    words: list[str]


@task(inject_context=True)
def chan_writer(ctx: TaskContext) -> str:
    """Writes channel values, then holds its worker until a reader elsewhere acknowledges them (so
    with one slot per worker the two ran on different workers).

    Two ``set`` calls are two writes, not one: a reader may run between them. ``greeting``, the
    key the reader waits for, is written last, so a reader that sees it must see ``note`` too
    (each ``set`` returns once the result-store has stored it). Written first, a reader polling
    for ``greeting`` could read ``note`` before it was set, and fail at once (the flake of issue 8).
    """
    ctx.channel.set("note", ChannelNote(author=ctx.worker_id, words=["a", "b"]))
    ctx.channel.set("greeting", "hello from the writer")
    deadline = time.monotonic() + 30
    while not ctx.channel.exists("read_by"):
        if time.monotonic() > deadline:
            raise TimeoutError("no reader acknowledged the channel values within 30 s")
        time.sleep(0.02)
    return ctx.worker_id


@task(inject_context=True)
def chan_reader(ctx: TaskContext) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while (greeting := ctx.channel.get("greeting", None)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError("the writer's channel values did not appear within 30 s")
        time.sleep(0.02)
    # The writer set ``note`` before ``greeting``: a missing note means a channel write that had
    # returned was not visible to another worker.
    note = ctx.channel.get_typed("note", ChannelNote)
    if note is None:
        raise AssertionError("greeting is visible but note, written before it, is not")
    ctx.channel.set("read_by", ctx.worker_id)
    return {"worker": ctx.worker_id, "greeting": greeting, "note_author": note.author,
            "note_words": note.words, "typed": isinstance(note, ChannelNote)}


@task(inject_context=True)
def chan_params(ctx: TaskContext, chan_writer: str, greeting: str,
                fallback: str = "default") -> dict[str, str]:
    """``greeting`` is no upstream task: it comes from the channel; ``fallback`` from its default."""
    return {"writer": chan_writer, "greeting": greeting, "fallback": fallback}


@task
def greet(greeting: str, punctuation: str = ".") -> str:
    """Both parameters from the run's arguments (its first channel values) when it is given them."""
    return f"{greeting}{punctuation}"


@task(inject_context=True)
def chan_count(ctx: TaskContext, i: int, times: int = 20) -> int:
    for step in range(times):
        ctx.channel.add("total", i)
        ctx.channel.append("log", f"{i}:{step}")
    ctx.channel.prepend("members", i)
    return i


@task(inject_context=True, retry=RetryPolicy(max_attempts=3, initial_interval=0.05, jitter=0))
def chan_checkpointed(ctx: TaskContext, steps: int = 5, fail_at: int = 3,
                      crash: bool = False) -> dict[str, Any]:
    """Does ``steps`` steps, each counted in ``effects:<run>:<node>:step<n>`` and checkpointed; on
    attempt 1 it fails (raises, or kills its worker when ``crash``) just after step ``fail_at``."""
    state = ctx.last_checkpoint or {"done": 0}
    resumed_from = state["done"]
    for step in range(state["done"] + 1, steps + 1):
        effects().incr(f"effects:{ctx.run_id}:{ctx.node_id}:step{step}")
        state = {"done": step}
        ctx.checkpoint(state)
        if step == fail_at and ctx.attempt == 1:
            if crash:
                os._exit(17)
            raise ConnectionError(f"transient failure after step {step}")
    return {"attempt": ctx.attempt, "resumed_from": resumed_from, "done": state["done"]}


# ---- human feedback and child runs (waits_test.py) ----
def count_asks(ctx: TaskContext) -> None:
    """``asked:<run>:<node>``: how many times the task reached its question (runs of its body)."""
    effects().incr(f"asked:{ctx.run_id}:{ctx.node_id}")


@task(inject_context=True)
def ask(ctx: TaskContext, kind: str = "approval", prompt: str = "go ahead?", options: list[str] | None = None,
        timeout: float | None = None, on_timeout: str = "fail") -> dict[str, Any]:
    """Asks one question; returns the answer (its effect happens once, after the answer)."""
    count_asks(ctx)
    answer = ctx.request_feedback(kind, prompt, options=options, metadata={"node": ctx.node_id},
                                  timeout=timeout, on_timeout=on_timeout)
    record(ctx)
    return {"approved": answer.approved, "text": answer.text, "selected": answer.selected,
            "selected_multiple": answer.selected_multiple, "custom": answer.custom_data,
            "by": answer.responded_by, "worker": ctx.worker_id}


@task(inject_context=True)
def interview(ctx: TaskContext) -> str:
    """Two questions in turn: the run after the first answer gets it again and asks the second."""
    count_asks(ctx)
    name = ctx.request_text_input("your name?")
    color = ctx.request_selection(f"{name}, pick a color", ["red", "blue"])
    record(ctx)
    return f"{name}:{color}"


@task(inject_context=True)
def spawn_child(ctx: TaskContext, n: int = 3) -> int:
    """Runs ``source(n) >> add_one`` as a child run and uses its result."""
    from graflow import workflow

    with workflow("child") as wf:
        source(task_id="a", value=n) >> add_one(task_id="b")
    value = ctx.run_child(wf, labels={"parent_node": ctx.node_id})
    record(ctx)
    return value * 10


@task(inject_context=True)
def spawn_waiting_child(ctx: TaskContext) -> str:
    """Waits for a child run whose only task waits until canceled."""
    from graflow import workflow

    with workflow("long-child") as wf:
        cooperative_wait(task_id="long", seconds=60)
    return str(ctx.run_child(wf))


@task(inject_context=True)
def fire_child(ctx: TaskContext, n: int = 1) -> str:
    """Starts a child run and goes on without waiting; returns the child's run id."""
    from graflow import workflow

    with workflow("fire-and-forget") as wf:
        source(task_id="a", value=n)
    record(ctx)
    return ctx.start_child(wf)


@task(inject_context=True)
async def ask_async(ctx: TaskContext) -> str:
    """An ``async def`` task asking for text (the answer is in the envelope: no I/O to await)."""
    return f"async:{ctx.request_text_input('say something')}"


@task(inject_context=True)
def review_loop(ctx: TaskContext, data: list[str] | None = None) -> list[str]:
    """Asks for one note per cycle (next_iteration) until it has two."""
    notes = [*(data or []), ctx.request_text_input(f"note {len(data or []) + 1}?")]
    if len(notes) < 2:
        ctx.next_iteration(notes)
    return notes


# ---- ended runs start no more work (tests/e2e/ended_runs_test.py) ----
# Each body records its start (ms) in ``starts:<run>`` on the effects Redis, before anything else.
FANOUT = 2000


def mark_started(ctx: TaskContext) -> None:
    effects().hset(f"starts:{ctx.run_id}", ctx.node_id, time.time_ns() // 1_000_000)


@task(inject_context=True)
def end_begin(ctx: TaskContext) -> int:
    mark_started(ctx)
    return 0


@task(inject_context=True)
def end_member(ctx: TaskContext, i: int = 0) -> int:
    mark_started(ctx)
    return i


@task(inject_context=True)
def end_fail(ctx: TaskContext, after: str = "") -> None:
    """Fails at once (not retryable), or once ``after`` (a node of its run) has started."""
    mark_started(ctx)
    deadline = time.monotonic() + 20
    while after and not effects().hexists(f"starts:{ctx.run_id}", after) and time.monotonic() < deadline:
        time.sleep(0.01)
    raise NonRetryableError("member broke on purpose")


@task(inject_context=True)
def end_terminate(ctx: TaskContext) -> None:
    mark_started(ctx)
    ctx.terminate_workflow("terminated on purpose")


@task(inject_context=True)
def end_cancel(ctx: TaskContext) -> None:
    mark_started(ctx)
    ctx.cancel_workflow("canceled on purpose")


@task(inject_context=True)
def end_waiter(ctx: TaskContext, timeout_s: float = 30.0) -> str:
    """Loops until its run ended (``ctx.is_canceled()``), records when it saw it, then stops with
    ``ctx.check_canceled()``."""
    mark_started(ctx)
    deadline = time.monotonic() + timeout_s
    while not ctx.is_canceled() and time.monotonic() < deadline:
        time.sleep(0.005)
    effects().hset(f"seen:{ctx.run_id}", ctx.node_id, time.time_ns() // 1_000_000)
    ctx.check_canceled()
    return "never saw the end"


def end_fanout(name: str, *, policy: Any = None, extra: Any = None, queue: str | None = None,
               members: int = FANOUT) -> Any:
    """``end_begin >> parallel(extra?, members...) >> end_member(join)``; ``policy`` may be a
    callable taking the member nodes."""
    from graflow import parallel, workflow

    options = {"queue": queue} if queue else {}
    with workflow(name, **options) as wf:
        nodes = [end_member(task_id=f"m{i}", i=i) for i in range(members)]
        if extra is not None:
            nodes = [extra(), *nodes]
        chosen = policy(nodes) if callable(policy) else policy
        members = parallel(*nodes, name="members", policy=chosen)
        end_begin(task_id="begin") >> members >> end_member(task_id="join")
    return wf


@task(inject_context=True)
def end_parent(ctx: TaskContext) -> str:
    """Starts the 2,000-member fan-out as a child run and waits for it."""
    return str(ctx.run_child(end_fanout("ended-child")))
