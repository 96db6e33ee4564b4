"""Running one attempt: look up the task type, bind parameters, call the function, encode the result.

Synchronous functions run in a bounded thread pool (``concurrency`` threads), ``async def`` ones on
the event loop; at most ``concurrency`` functions run at once. The attempt's timeout
(``envelope.timeout_ms``, else the task's ``@task(timeout=...)``) cancels an ``async def`` task. A
thread can't be killed: a timed-out synchronous function keeps running, its result is discarded,
and it keeps its thread and its running slot until it returns (so the worker takes less new work
instead of oversubscribing). The attempt itself fails at once with ``TaskTimeout``.

The runner never raises for a task's failure: it returns an :class:`Execution` with the outcome
(and the result to store when the attempt succeeded). A successful attempt carries the directives
its TaskContext recorded (next_task, goto, ...); a failed one drops them. ``ctx.next_iteration``
data reaches the next cycle as the keyword argument ``data``. A delivery of a run that has ended is
not started: the registry of ended runs (:mod:`graflow_worker.cancellation`) is checked once more
right before the function is called, after a running slot was obtained; the attempt ends
``STATUS_CANCELED`` (error ``RunEnded``). A body that stops on ``ctx.check_canceled()``
(``TaskCanceledError``) because its run ended is ``STATUS_CANCELED`` too (not a failure). A task
that must wait (``ctx.request_feedback``
without an answer yet, ``ctx.run_child`` before the child ended) ends its attempt WAITING: the outcome
says what it waits for, no result is stored, its directives are dropped, and the scheduler parks the
node until it runs again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import inspect
import os
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from opentelemetry import trace

from graflow import payload
from graflow.context import Channel, ChannelBackend, ChildRunsBackend, TaskContext
from graflow.dsl import TaskFunc
from graflow.errors import NonRetryableError, PayloadError, TaskCanceledError
from graflow.feedback import WaitRequested
from graflow_api.v1 import common_pb2, messages_pb2
from graflow_api.v1 import result_store_pb2 as rs_pb2
from graflow_runtime import metrics, telemetry, user_json
from graflow_runtime.limits import DEFAULT_MAX_CYCLES

from graflow_worker.binding import BindingError, bind, binds_upstream, channel_candidates
from graflow_worker.cancellation import Cancellations
from graflow_worker.channel import read_channel_values
from graflow_worker.intake import Intake
from graflow_worker.registry import Registry
from graflow_worker.threads import CompletionBridge

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("graflow_worker")

SUCCEEDED = messages_pb2.TaskOutcome.STATUS_SUCCEEDED
FAILED = messages_pb2.TaskOutcome.STATUS_FAILED
WAITING = messages_pb2.TaskOutcome.STATUS_WAITING
CANCELED = messages_pb2.TaskOutcome.STATUS_CANCELED
TASK_TIMEOUT = "TaskTimeout"
# Error type of a delivery not started because its run had ended.
RUN_ENDED = "RunEnded"
MAX_MESSAGE_CHARS = 4096
TASK_THREAD_PREFIX = "graflow-task"
# Frames of the worker itself, asyncio and the thread pool are left out of traceback summaries.
_INTERNAL = (__file__, *(os.path.dirname(p) + os.sep
                         for p in (asyncio.__file__, concurrent.futures.__file__)))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Execution:
    """A finished attempt: its outcome and, for a success, the result to store."""

    outcome: messages_pb2.TaskOutcome
    result: rs_pb2.NodeResult | None = None


class _Failure(Exception):
    def __init__(self, error: common_pb2.ErrorInfo) -> None:
        super().__init__(error.message)
        self.error = error


class _AttemptTimedOut(Exception):
    pass


class _RunEnded(Exception):
    """The attempt was not started, or stopped on the cancel, because its run had ended."""

    def __init__(self, error: common_pb2.ErrorInfo) -> None:
        super().__init__(error.message)
        self.error = error


class _Waiting(Exception):
    def __init__(self, wait: messages_pb2.Wait, description: str) -> None:
        super().__init__(description)
        self.wait = wait


def failure(error_type: str, message: str, *, retryable: bool, tb: str = "") -> common_pb2.ErrorInfo:
    return common_pb2.ErrorInfo(
        type=error_type, message=message[:MAX_MESSAGE_CHARS], traceback=tb, retryable=retryable
    )


def error_from_exception(exc: BaseException, frames: int) -> common_pb2.ErrorInfo:
    """ErrorInfo of an exception raised by a task: class name, message, last ``frames`` frames of
    the task's own code (the worker's, asyncio's and the thread pool's frames are left out)."""
    stack = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_INTERNAL)]
    summary = "".join(traceback.format_list(stack[-frames:]))
    summary += "".join(traceback.format_exception_only(type(exc), exc))
    return failure(
        type(exc).__name__, str(exc), retryable=not isinstance(exc, NonRetryableError), tb=summary
    )


class Runner:
    def __init__(self, registry: Registry, *, worker_id: str, concurrency: int, traceback_frames: int = 8,
                 channel_factory: Callable[[str], ChannelBackend] | None = None,
                 intake: Intake | None = None, tracing: bool = True,
                 cancellations: Cancellations | None = None,
                 children_factory: Callable[[str], ChildRunsBackend] | None = None) -> None:
        self.registry = registry
        self.cancellations = cancellations or Cancellations()
        # TaskContext of each attempt running (by id of its envelope), for its directives.
        self._contexts: dict[int, TaskContext] = {}
        self.tracing = tracing
        self.worker_id = worker_id
        self.traceback_frames = traceback_frames
        self._channel_factory = channel_factory
        self._children_factory = children_factory
        self._intake = intake
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix=TASK_THREAD_PREFIX
        )
        self._running = asyncio.Semaphore(concurrency)
        self._bridge: CompletionBridge | None = None
        # Timed-out synchronous functions still running in their thread.
        self.abandoned = 0

    def close(self) -> None:
        """Stop the pool without waiting; threads still running finish on their own."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def needs_upstream(self, envelope: messages_pb2.TaskEnvelope) -> bool:
        """Whether the attempt's parameters can bind an upstream result, so its upstream results
        are to be fetched (:func:`graflow_worker.binding.binds_upstream`). False for an unknown
        task type or arguments that are not a JSON object: the attempt fails on them before
        binding, whatever upstream holds."""
        if not envelope.input_node_ids:
            return False
        task = self.registry.tasks.get(envelope.task_type)
        if task is None or not binds_upstream(task, ()):
            return False
        try:
            bound_args = _with_iteration_data(task, envelope, payload.decode_args(envelope.args_json))
        except (BindingError, PayloadError, ValueError):
            return False
        return binds_upstream(task, bound_args)

    async def run(self, envelope: messages_pb2.TaskEnvelope, upstream: Mapping[str, common_pb2.Payload],
                  upstream_types: Mapping[str, str] | None = None) -> Execution:
        """Run one attempt with the upstream results that exist (node id -> payload) and the task
        types that produced them (node id -> task type)."""
        started = now_ms()
        # A delivery of an ended run is skipped, not started: it is not counted.
        counted = not self.cancellations.is_canceled(envelope.run_id)
        if counted:
            _count_start(envelope, started)
        token = telemetry.attach_trace_context(envelope.trace_context)
        # (bind + reset: structlog's bound_contextvars also scans every context variable per call)
        log_tokens = structlog.contextvars.bind_contextvars(
            run_id=envelope.run_id, node_id=envelope.node_id, attempt=envelope.attempt,
            worker_id=self.worker_id, task_type=envelope.task_type,
        )
        try:
            with self._span(envelope) as span:
                outcome = messages_pb2.TaskOutcome(
                    run_id=envelope.run_id, node_id=envelope.node_id, attempt=envelope.attempt,
                    worker_id=self.worker_id, started_at_ms=started,
                )
                result = None
                try:
                    value = await self._attempt(envelope, upstream, upstream_types)
                except _RunEnded as exc:
                    outcome.status = CANCELED
                    outcome.error.CopyFrom(exc.error)
                    if exc.error.type == RUN_ENDED:
                        outcome.started_at_ms = 0
                        self.cancellations.note_skipped(envelope.run_id)
                        log.debug("delivery of an ended run skipped")
                    else:
                        log.info("task stopped: its run ended", error=exc.error.message)
                except _Waiting as exc:
                    outcome.status = WAITING
                    outcome.wait.CopyFrom(exc.wait)
                    log.info("task waits", waiting_for=str(exc))
                except _Failure as exc:
                    outcome.status = FAILED
                    outcome.error.CopyFrom(exc.error)
                    span.set_status(trace.Status(trace.StatusCode.ERROR, exc.error.type))
                    log.info("task failed", error_type=exc.error.type, error=exc.error.message,
                             retryable=exc.error.retryable)
                else:
                    outcome.status = SUCCEEDED
                    outcome.has_result = True
                    ctx = self._contexts.get(id(envelope))
                    if ctx is not None and ctx.directives:
                        outcome.directives.extend(ctx.directives)
                    result = rs_pb2.NodeResult(
                        run_id=envelope.run_id, node_id=envelope.node_id, attempt=envelope.attempt,
                        value=value, worker_id=self.worker_id, task_type=envelope.task_type,
                    )
                outcome.finished_at_ms = now_ms()
                if counted:
                    _count_end(envelope, outcome)
                if self.tracing:
                    telemetry.inject_trace_context(outcome.trace_context)
                else:
                    outcome.trace_context.update(envelope.trace_context)
                return Execution(outcome=outcome, result=result)
        finally:
            self._contexts.pop(id(envelope), None)
            structlog.contextvars.reset_contextvars(**log_tokens)
            telemetry.detach(token)

    def _span(self, envelope: messages_pb2.TaskEnvelope) -> contextlib.AbstractContextManager[Any]:
        """The span "task <type>" around the attempt. Without a trace exporter no span is made (it
        would go nowhere); the envelope's trace context is still current, so logs carry its trace id
        and the outcome carries it on."""
        if not self.tracing:
            return contextlib.nullcontext(trace.get_current_span())
        return tracer.start_as_current_span(
            f"task {envelope.task_type}",
            attributes={"graflow.run_id": envelope.run_id, "graflow.node_id": envelope.node_id,
                        "graflow.attempt": envelope.attempt},
        )

    async def _attempt(self, envelope: messages_pb2.TaskEnvelope, upstream: Mapping[str, common_pb2.Payload],
                       upstream_types: Mapping[str, str] | None) -> common_pb2.Payload:
        self._check_not_ended(envelope)
        task = self.registry.tasks.get(envelope.task_type)
        if task is None:
            raise _Failure(failure(
                "UnknownTaskType",
                f"task type {envelope.task_type!r} is not registered in worker {self.worker_id} "
                f"(queue {envelope.queue!r}); it registers: {', '.join(self.registry.task_types)}. "
                "Add its module to GRAFLOW_WORKER_TASK_MODULES of the workers reading this queue, or "
                "send the task to a queue whose workers have it",
                retryable=False,
            ))
        try:
            bound_args = _with_iteration_data(task, envelope, payload.decode_args(envelope.args_json))
            channel_values = await self._channel_fallback(
                task, envelope, bound_args, upstream, upstream_types)
            call = bind(task, node_id=envelope.node_id, bound_args=bound_args,
                        input_node_ids=list(envelope.input_node_ids), upstream=upstream,
                        upstream_types=upstream_types, decode=payload.decode, channel=channel_values)
        except BindingError as exc:
            raise _Failure(failure(exc.error_type, exc.message, retryable=exc.retryable)) from exc
        except (PayloadError, ValueError) as exc:
            raise _Failure(failure(
                "InvalidArguments",
                f"arguments or upstream results of node {envelope.node_id!r} are not valid JSON: {exc}",
                retryable=False,
            )) from exc
        args = call.args
        if task.inject_context:
            args = [self._context(envelope, task), *args]
        timeout = envelope.timeout_ms / 1000 if envelope.timeout_ms else task.options.timeout
        try:
            value = await self._invoke(task, args, call.kwargs, timeout or None, envelope)
        except _AttemptTimedOut:
            raise _Failure(failure(
                TASK_TIMEOUT,
                f"task {task.name!r} (node {envelope.node_id!r}, attempt {envelope.attempt}) did not "
                f"finish within {timeout:g} s",
                retryable=True,
            )) from None
        except asyncio.CancelledError:
            task_being_cancelled = asyncio.current_task()
            if task_being_cancelled is not None and task_being_cancelled.cancelling():
                raise  # the worker is stopping
            raise _Failure(failure("CancelledError", "the task was cancelled", retryable=True)) from None
        except WaitRequested as exc:
            raise _Waiting(exc.wait, str(exc)) from None
        except _RunEnded:
            raise
        except TaskCanceledError as exc:
            if not self.cancellations.is_canceled(envelope.run_id):
                # Not the run's end (e.g. after the task's own ctx.cancel_workflow()): a failure.
                raise _Failure(error_from_exception(exc, self.traceback_frames)) from None
            raise _RunEnded(error_from_exception(exc, self.traceback_frames)) from None
        except BaseException as exc:  # noqa: BLE001 - every failure of user code becomes an outcome
            if isinstance(exc, (KeyboardInterrupt, GeneratorExit)):
                raise
            raise _Failure(error_from_exception(exc, self.traceback_frames)) from None
        try:
            return payload.encode(value)
        except PayloadError as exc:
            raise _Failure(failure("ResultNotSerializable", str(exc), retryable=False)) from exc

    def _check_not_ended(self, envelope: messages_pb2.TaskEnvelope) -> None:
        if self.cancellations.is_canceled(envelope.run_id):
            raise _RunEnded(failure(
                RUN_ENDED,
                f"run {envelope.run_id} had ended; node {envelope.node_id!r} (attempt "
                f"{envelope.attempt}) was not started",
                retryable=False,
            ))

    async def _channel_fallback(self, task: TaskFunc, envelope: messages_pb2.TaskEnvelope,
                                bound_args: Mapping[str, Any], upstream: Mapping[str, Any],
                                upstream_types: Mapping[str, str] | None) -> dict[str, Any]:
        """Channel values of the parameters nothing else supplies: one batched ChannelGet, none
        when every parameter is bound (see :mod:`graflow_worker.binding`)."""
        names = channel_candidates(task, bound_args=bound_args, input_node_ids=list(envelope.input_node_ids),
                                   upstream=upstream, upstream_types=upstream_types)
        if not names or self._channel_factory is None:
            return {}
        backend = self._channel_factory(envelope.run_id)
        try:
            return await read_channel_values(backend, names, self._intake)
        except grpc.aio.AioRpcError as exc:
            raise _Failure(failure(
                "ChannelReadFailed",
                f"can't read channel keys {', '.join(map(repr, names))} for node "
                f"{envelope.node_id!r}: {exc.code().name}: {exc.details()}",
                retryable=True,
            )) from exc

    def _context(self, envelope: messages_pb2.TaskEnvelope, task: TaskFunc) -> TaskContext:
        backend = self._channel_factory(envelope.run_id) if self._channel_factory else _NoChannel()
        ctx = TaskContext(
            run_id=envelope.run_id, node_id=envelope.node_id, task_type=task.name,
            attempt=envelope.attempt, max_attempts=envelope.max_attempts, worker_id=self.worker_id,
            channel=Channel(backend), cycle=envelope.cycle,
            max_cycles=envelope.max_cycles or DEFAULT_MAX_CYCLES,
            cancel_event=self.cancellations.event(envelope.run_id),
            checkpoints=backend if hasattr(backend, "get_checkpoint") else None,
            feedback={answer.request_id: answer for answer in envelope.feedback},
            children=self._children_factory(envelope.run_id) if self._children_factory else None,
        )
        self._contexts[id(envelope)] = ctx
        return ctx

    async def _invoke(self, task: TaskFunc, args: list[Any], kwargs: dict[str, Any],
                      timeout: float | None, envelope: messages_pb2.TaskEnvelope) -> Any:
        await self._running.acquire()
        release = True
        try:
            # The last moment before the body starts: the run may have ended since the read.
            self._check_not_ended(envelope)
            scope = asyncio.timeout(timeout) if timeout is not None else _NO_TIMEOUT
            if task.is_async:
                try:
                    async with scope:
                        return await task.fn(*args, **kwargs)
                except TimeoutError:
                    if scope.expired():
                        raise _AttemptTimedOut from None
                    raise
            # Copy the context so the task's logs carry the ids and its spans the trace.
            future = self._executor.submit(
                contextvars.copy_context().run, functools.partial(task.fn, *args, **kwargs)
            )
            try:
                async with scope:
                    return await self._completion(future)
            except TimeoutError:
                if scope.expired():
                    release = not self._abandon(future)
                    raise _AttemptTimedOut from None
                raise
            except asyncio.CancelledError:
                release = not self._abandon(future)
                raise
        finally:
            if release:
                self._running.release()

    def _completion(self, future: concurrent.futures.Future[Any]) -> asyncio.Future[Any]:
        """``future`` awaitable on the running loop (completions reach the loop in batches)."""
        loop = asyncio.get_running_loop()
        if self._bridge is None or self._bridge.loop is not loop:
            self._bridge = CompletionBridge(loop)
        return self._bridge.wrap(future)

    def _abandon(self, future: concurrent.futures.Future[Any]) -> bool:
        """Leave a still-running thread behind; its slot is given back when it returns."""
        if future.done():
            return False
        loop = asyncio.get_running_loop()
        self.abandoned += 1
        if self._intake is not None:
            self._intake.take(1)

        def finished() -> None:
            self.abandoned -= 1
            self._running.release()
            if self._intake is not None:
                self._intake.give(1)

        def on_done(_: concurrent.futures.Future[Any]) -> None:
            try:
                loop.call_soon_threadsafe(finished)
            except RuntimeError:  # the loop is closed: the worker is gone
                pass

        future.add_done_callback(on_done)
        return True


def _count_start(envelope: messages_pb2.TaskEnvelope, started_ms: int) -> None:
    labels = (envelope.task_type, envelope.queue)
    metrics.TASKS_STARTED.labels(*labels).inc()
    if envelope.enqueued_at_ms:
        wait_s = max(0, started_ms - envelope.enqueued_at_ms) / 1000
        metrics.TASK_QUEUE_WAIT.labels(*labels).observe(wait_s)


def _count_end(envelope: messages_pb2.TaskEnvelope, outcome: messages_pb2.TaskOutcome) -> None:
    labels = (envelope.task_type, envelope.queue)
    metrics.TASK_DURATION.labels(*labels).observe((outcome.finished_at_ms - outcome.started_at_ms) / 1000)
    if outcome.status == SUCCEEDED:
        metrics.TASKS_SUCCEEDED.labels(*labels).inc()
    elif outcome.status == FAILED:
        metrics.TASKS_FAILED.labels(*labels).inc()
        if outcome.error.type == TASK_TIMEOUT:
            metrics.TASKS_TIMED_OUT.labels(*labels).inc()


def _with_iteration_data(task: TaskFunc, envelope: messages_pb2.TaskEnvelope,
                         bound_args: dict[str, Any]) -> dict[str, Any]:
    """The bound arguments plus ``data`` from the previous cycle's ctx.next_iteration(data)."""
    if not envelope.iteration_data_json:
        return bound_args
    params = task.signature.parameters.values()
    if not any(p.name == "data" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        raise BindingError(
            "InvalidArguments",
            f"node {envelope.node_id!r} (cycle {envelope.cycle}) received data from "
            "ctx.next_iteration(data), "
            f"but task {task.name!r} has no parameter `data`: add one (`data=None` for its first run)",
            retryable=False,
        )
    return {**bound_args, "data": user_json.loads(envelope.iteration_data_json)}


class _NoTimeout:
    """The scope of an attempt without a timeout (``asyncio.timeout(None)`` costs more per task)."""

    async def __aenter__(self) -> _NoTimeout:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def expired(self) -> bool:
        return False


_NO_TIMEOUT = _NoTimeout()


class _NoChannel:
    """Used when the runner has no result-store (unit tests)."""

    def _fail(self, *_: Any) -> Any:
        raise RuntimeError("this runner has no channel backend")

    get_many = set_many = delete = keys = update = _fail
