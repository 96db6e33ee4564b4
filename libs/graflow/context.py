"""What a running task can see and do: :class:`TaskContext` (``@task(inject_context=True)``).

Control flow calls (``next_task``, ``goto``, ``next_iteration``, ``terminate_workflow``,
``cancel_workflow``) are recorded as directives and carried in the attempt's outcome; the
scheduler applies them with the outcome, atomically. They take effect only when the task returns
successfully: a task that raises afterwards (or fails its attempt otherwise) drops them, and its
retry starts with none.

Human feedback and child runs (:mod:`graflow.feedback`): ``request_feedback`` and its shortcuts,
and ``run_child``/``wait_child``, return at once when their answer or child result is there, and
otherwise park the node (WAITING, holding no worker) until it is; the task then runs again from its
start (or its checkpoint) and the same call returns. ``start_child`` starts a child run and goes on.

Cancellation is cooperative: when the run ends (canceled, failed, terminated: any end), the worker
sets the context's cancel event within 0.5 s; ``is_canceled()`` turns true and
``check_canceled()`` raises :class:`~graflow.errors.TaskCanceledError`, which ends the attempt as
canceled (not failed). Nothing interrupts a task that does not look.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import structlog

from graflow import payload
from graflow.dsl import TaskFunc, TaskNode, Workflow
from graflow.errors import ChildRunError, TaskCanceledError, WorkflowDefinitionError
from graflow.feedback import FeedbackResponse, WaitRequested, build_request
from graflow.typed import from_json
from graflow_api.v1 import common_pb2, feedback_pb2, messages_pb2, scheduler_pb2, workflow_pb2
from graflow_runtime.limits import DEFAULT_MAX_CYCLES, MAX_DIRECTIVES

_MISSING = object()
T = TypeVar("T")


class ChannelBackend(Protocol):
    """Storage of a run's channel; the worker supplies one backed by the result-store."""

    def get_many(self, keys: list[str]) -> dict[str, Any]: ...

    def set_many(self, values: dict[str, Any], ttl_s: float | None) -> None: ...

    def delete(self, keys: list[str]) -> int: ...

    def keys(self) -> list[str]: ...

    def update(self, key: str, operation: str, value: Any, ttl_s: float | None) -> Any:
        """Atomic ``"append"``/``"prepend"`` (lists) or ``"add"`` (numbers; returns the new value)."""
        ...


class CheckpointBackend(Protocol):
    """Storage of a node's checkpoint; the worker supplies one backed by the result-store."""

    def put_checkpoint(self, node_id: str, state: Any) -> None: ...

    def get_checkpoint(self, node_id: str) -> tuple[bool, Any]: ...


class ChildRunsBackend(Protocol):
    """Starting and reading child runs; the worker supplies one backed by the scheduler."""

    def submit(
        self, spec: workflow_pb2.WorkflowSpec, idempotency_key: str, labels: dict[str, str], parent_node: str
    ) -> scheduler_pb2.SubmitRunResponse: ...

    def get_run(self, run_id: str) -> scheduler_pb2.Run: ...

    def results(self, run_id: str, node_ids: list[str]) -> dict[str, Any]: ...


class Channel:
    """A run-scoped key/value space shared by the run's tasks on every worker."""

    def __init__(self, backend: ChannelBackend) -> None:
        self._backend = backend

    def get(self, key: str, default: Any = None) -> Any:
        return self._backend.get_many([key]).get(key, default)

    def set(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        """Store ``value`` (JSON or bytes) under ``key``; ``ttl`` in seconds."""
        self._backend.set_many({key: value}, ttl)

    def delete(self, key: str) -> bool:
        return self._backend.delete([key]) > 0

    def exists(self, key: str) -> bool:
        return self._backend.get_many([key]).get(key, _MISSING) is not _MISSING

    def keys(self) -> list[str]:
        return self._backend.keys()

    def append(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        """Add ``value`` at the end of the list under ``key`` (a missing key starts as ``[]``),
        atomically: appends from tasks running at the same time are all kept."""
        self._backend.update(key, "append", value, ttl)

    def prepend(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        """Add ``value`` at the start of the list under ``key`` (atomically, as :meth:`append`)."""
        self._backend.update(key, "prepend", value, ttl)

    def add(self, key: str, amount: int | float = 1, *, ttl: float | None = None) -> int | float:
        """Add ``amount`` to the number under ``key`` (a missing key starts at 0), atomically;
        returns the new value."""
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            raise TypeError(f"add() takes a number, not {type(amount).__name__}")
        return self._backend.update(key, "add", amount, ttl)  # type: ignore[no-any-return]

    def get_typed(self, key: str, cls: type[T], default: Any = None) -> T | Any:
        """The value under ``key`` as a ``cls`` (a dataclass, nested ones included, or a class
        with ``model_validate``), else ``default``. Values are stored as JSON: ``set`` a
        dataclass and read it back with this."""
        value = self._backend.get_many([key]).get(key, _MISSING)
        return default if value is _MISSING else from_json(cls, value)


@dataclass
class TaskContext:
    """Identity of the running attempt, its logger, the run's channel, dynamic control flow and
    cooperative cancellation."""

    run_id: str
    node_id: str
    task_type: str
    # The delivery number of the node: retries, reclaims after a lost worker, re-runs after a wait
    # (feedback, child run) and new cycles each count. Only failures count against max_attempts
    # (``attempt`` may exceed it after waits or cycles).
    attempt: int
    max_attempts: int
    worker_id: str
    channel: Channel
    # How many times this node ran before in this run (re-runs: next_iteration, goto, loop edges).
    cycle: int = 0
    # Re-runs allowed for this node (its max_cycles, else the run default, else 100).
    max_cycles: int = DEFAULT_MAX_CYCLES
    # Set by the worker when the run is canceled (shared by the run's tasks on this worker).
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)
    # Directives recorded by this attempt, sent with its outcome when it succeeds.
    directives: list[messages_pb2.Directive] = field(default_factory=list, repr=False)
    _cancel_requested: bool = field(default=False, repr=False)
    # Where checkpoints go (the worker's result-store backend; None: checkpoints are unavailable).
    checkpoints: CheckpointBackend | None = field(default=None, repr=False)
    _checkpoint: Any = field(default=_MISSING, repr=False)
    # Answers to this node's feedback requests in this cycle, by request id (from the envelope).
    feedback: dict[str, feedback_pb2.FeedbackResponse] = field(default_factory=dict, repr=False)
    # Where child runs are started (the worker's scheduler backend; None: unavailable).
    children: ChildRunsBackend | None = field(default=None, repr=False)
    _requests: int = field(default=0, repr=False)
    _asked: set[str] = field(default_factory=set, repr=False)
    _child_runs: int = field(default=0, repr=False)

    @property
    def task_id(self) -> str:
        """Graflow's name for the node id."""
        return self.node_id

    @property
    def log(self) -> Any:
        return structlog.get_logger("graflow.task").bind(
            run_id=self.run_id, node_id=self.node_id, attempt=self.attempt, worker_id=self.worker_id
        )

    def get_channel(self) -> Channel:
        return self.channel

    # ---- dynamic control flow ----
    @property
    def cycle_count(self) -> int:
        """How many times this node ran before (0 on its first run)."""
        return self.cycle

    def can_iterate(self) -> bool:
        """True when ``next_iteration`` (or another re-run of this node) stays within max_cycles."""
        return self.cycle < self.max_cycles

    def next_task(self, task: TaskFunc | TaskNode, *, goto: bool = False, **kwargs: Any) -> str | None:
        """Add a node that runs after this task: a registered task (``fn``) or a bound node
        (``fn(task_id="t1", x=1)``), with ``kwargs`` as further arguments. It receives this task's
        result as its upstream input. This node's static successors wait for it, unless ``goto``:
        then they are skipped. A ``task_id`` naming an existing node of the run jumps there instead
        (as :meth:`goto`; the arguments are ignored).

        Returns the node id when the node has a ``task_id``; otherwise the scheduler names it
        ``"<this node>.next.<n>"`` and None is returned.
        """
        if isinstance(task, TaskNode):
            node_id, fn, args = task.node_id, task.task, {**task.args, **kwargs}
        elif isinstance(task, TaskFunc):
            node_id, fn, args = "", task, dict(kwargs)
        else:
            raise TypeError(
                "next_task() takes a @task function or a node (fn(task_id=..., ...)), "
                f"not {type(task).__name__}"
            )
        options = TaskNode(fn, fn.name, {}).to_proto()
        options.ClearField("id")
        options.ClearField("task_type")
        request = messages_pb2.NextTask(
            node_id=node_id,
            task_type=fn.name,
            args_json=payload.dumps(args) if args else b"",
            goto=goto,
            options=options,
        )
        self._record(messages_pb2.Directive(next_task=request))
        return node_id or None

    def goto(self, target: str | TaskNode | TaskFunc) -> None:
        """Jump to a node of the run (a node id, a node, or a task used under its own name): it runs
        again as a new cycle (or for the first time), and this node's static successors that wait
        for it are skipped (a later normal run of this node brings them back)."""
        node_id = target if isinstance(target, str) else getattr(target, "node_id", None)
        if not isinstance(node_id, str) or not node_id:
            raise TypeError(f"goto() takes a node id, a node or a task, not {target!r}")
        self._record(messages_pb2.Directive(goto=messages_pb2.Goto(node_id=node_id)))

    def next_iteration(self, data: Any = None) -> None:
        """Run this node again as its next cycle; ``data`` (JSON) is passed to that run as the
        keyword argument ``data`` (declare ``data=None`` for the first run). Its static successors
        run after the last cycle, the one that does not call next_iteration. Going beyond
        max_cycles fails the node with CycleLimitExceeded: check :meth:`can_iterate`."""
        raw = b"" if data is None else payload.dumps(data)
        self._record(messages_pb2.Directive(next_iteration=messages_pb2.NextIteration(data_json=raw)))

    def terminate_workflow(self, message: str = "") -> None:
        """End the run successfully after this task: nothing else is started, nodes that did not
        run are SKIPPED, ``message`` is kept as the run's message."""
        self._record(messages_pb2.Directive(terminate=messages_pb2.Terminate(message=message)))

    def cancel_workflow(self, message: str = "") -> None:
        """End the run as CANCELED after this task, with ``message``."""
        self._cancel_requested = True
        self._record(messages_pb2.Directive(cancel=messages_pb2.Cancel(message=message)))

    def _record(self, directive: messages_pb2.Directive) -> None:
        if len(self.directives) >= MAX_DIRECTIVES:
            raise WorkflowDefinitionError(
                f"task {self.task_type!r} recorded {MAX_DIRECTIVES} directives in one attempt; "
                "that is the limit"
            )
        self.directives.append(directive)

    # ---- checkpoints ----
    def checkpoint(self, state: Any) -> None:
        """Store this node's progress (JSON) in the result-store. When the node runs again after a
        crash, a retry or a reclaim of its attempt, :attr:`last_checkpoint` returns the last state
        stored, so the task can skip the work it already did."""
        self._checkpoint_backend().put_checkpoint(self.node_id, state)
        self._checkpoint = state

    @property
    def last_checkpoint(self) -> Any:
        """The state of this node's last :meth:`checkpoint` in this run (by any attempt), or None.
        Fetched from the result-store on first use only."""
        return self.restore()

    def restore(self, default: Any = None) -> Any:
        """The last checkpointed state of this node, else ``default``."""
        if self._checkpoint is _MISSING:
            found, state = self._checkpoint_backend().get_checkpoint(self.node_id)
            self._checkpoint = state if found else None
        return default if self._checkpoint is None else self._checkpoint

    def _checkpoint_backend(self) -> CheckpointBackend:
        if self.checkpoints is None:
            raise RuntimeError("checkpoints need a worker connected to the result-store")
        return self.checkpoints

    # ---- human in the loop ----
    def request_feedback(
        self,
        feedback_type: str,
        prompt: str,
        *,
        options: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        timeout: float | None = None,
        on_timeout: str = "fail",
        feedback_id: str | None = None,
    ) -> FeedbackResponse:
        """Ask a person and return the answer. ``feedback_type``: "approval", "text",
        "selection", "multi_selection" or "custom"; ``options`` for the selections; ``metadata``
        (JSON object) for whoever shows the request. Without an answer yet the node waits, holding
        no worker, and this task runs again once it is answered (see the module docstring).

        ``timeout`` (seconds, None = no deadline): then ``on_timeout="fail"`` fails the node with
        FeedbackTimeout, ``"keep_waiting"`` leaves the request open. ``feedback_id`` names the
        request (unique in the run); the default is ``"<node>.<cycle>.<n>"``.
        """
        if feedback_id is None:
            self._requests += 1
            request_id = f"{self.node_id}.{self.cycle}.{self._requests}"
        else:
            request_id = feedback_id
        if request_id in self._asked:
            raise ValueError(
                f"feedback_id {request_id!r} was used by an earlier question of this task: give each its own"
            )
        self._asked.add(request_id)
        answer = self.feedback.get(request_id)
        if answer is not None:
            return FeedbackResponse.from_proto(answer)
        request = build_request(
            request_id,
            feedback_type,
            prompt,
            options=options,
            metadata=metadata,
            timeout=timeout,
            on_timeout=on_timeout,
        )
        raise WaitRequested(messages_pb2.Wait(feedback=request), f"waiting for feedback {request_id!r}")

    def request_approval(self, prompt: str, **kwargs: Any) -> bool:
        """Ask for a yes or no (keyword arguments as :meth:`request_feedback`)."""
        return self.request_feedback("approval", prompt, **kwargs).approved

    def request_text_input(self, prompt: str, **kwargs: Any) -> str:
        """Ask for free text (keyword arguments as :meth:`request_feedback`)."""
        return self.request_feedback("text", prompt, **kwargs).text

    def request_selection(self, prompt: str, options: list[str], **kwargs: Any) -> str:
        """Ask to choose one of ``options`` (keyword arguments as :meth:`request_feedback`)."""
        return self.request_feedback("selection", prompt, options=options, **kwargs).selected

    # ---- child runs ----
    def start_child(
        self, workflow: Workflow | workflow_pb2.WorkflowSpec, *, labels: dict[str, str] | None = None
    ) -> str:
        """Start ``workflow`` as a child run of this node and return its run id at once. The child
        is a run of its own (visible, cancelable; canceled with this run). Starting is idempotent
        per call site: when this task runs again, the same call returns the same child."""
        spec = workflow.spec() if isinstance(workflow, Workflow) else workflow
        if not isinstance(spec, workflow_pb2.WorkflowSpec):
            raise TypeError(
                f"start_child() takes a graflow Workflow or a WorkflowSpec, not {type(workflow).__name__}"
            )
        if self.children is None:
            raise RuntimeError("child runs need a worker connected to the scheduler")
        self._child_runs += 1
        key = f"child:{self.run_id}:{self.node_id}:{self.cycle}:{self._child_runs}"
        return self.children.submit(spec, key, dict(labels or {}), self.node_id).run_id

    def run_child(
        self, workflow: Workflow | workflow_pb2.WorkflowSpec, *, labels: dict[str, str] | None = None
    ) -> Any:
        """Start ``workflow`` as a child run and return its result (as ``Run.result()``), the
        node waiting meanwhile without holding a worker. Raises :class:`ChildRunError` when the
        child failed or was canceled."""
        return self.wait_child(self.start_child(workflow, labels=labels))

    def wait_child(self, run_id: str) -> Any:
        """The result of child run ``run_id`` (started by this node), waiting for its end without
        holding a worker."""
        if self.children is None:
            raise RuntimeError("child runs need a worker connected to the scheduler")
        info = self.children.get_run(run_id)
        status = common_pb2.RunStatus.Name(info.status).removeprefix("RUN_STATUS_")
        if status in ("RUNNING", "PAUSED"):
            raise WaitRequested(messages_pb2.Wait(child_run_id=run_id), f"waiting for child run {run_id}")
        if status != "SUCCEEDED":
            raise ChildRunError(run_id, status, info.message or info.error.message or "no reason given")
        sinks = list(info.sink_node_ids)
        values = self.children.results(run_id, sinks)
        return values.get(sinks[0]) if len(sinks) == 1 else values

    # ---- cancellation ----
    def is_canceled(self) -> bool:
        """True once the run has ended, however (or this task called cancel_workflow)."""
        return self._cancel_requested or self.cancel_event.is_set()

    def check_canceled(self) -> None:
        """Raise :class:`TaskCanceledError` when the run has ended: call it between steps of long
        work to stop early."""
        if self.is_canceled():
            raise TaskCanceledError(f"run {self.run_id} was canceled; node {self.node_id!r} stops")
