"""Waits: human feedback and child runs (waits.lua, resolve_wait.lua).

A task that asks for feedback, or waits for a child run it started, ends its attempt with a
WAITING outcome; its node is parked, holding no worker. :class:`Waits` resolves parked nodes:

- an answer through the API (:meth:`Waits.respond`) resumes the node with it;
- the wait timer (:meth:`Waits.run`) fires the deadlines of requests with a timeout (the node fails
  with FeedbackTimeout, through the outcome stream like any failure, or keeps waiting) and resumes
  the parents of child runs that ended (``finish_run`` records every ended child atomically);
- a resumed node is dispatched at once; if that fails it stays READY for the recovery sweep.

Every step is an idempotent script call: replicas may run the timer side by side, and a crash
between two steps is repaired by the next pass.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import grpc
import redis.asyncio as aioredis
import structlog
from google.protobuf.message import DecodeError

from graflow_api.v1 import common_pb2, feedback_pb2, messages_pb2
from graflow_runtime import keys
from graflow_runtime.grpc_client import DownstreamUnavailable
from graflow_runtime.loops import BackgroundLoop
from graflow_runtime.redis_client import REDIS_UNAVAILABLE

from graflow_scheduler.dispatch import Dispatcher, delivery
from graflow_scheduler.dynamic import DynamicNodes, task_of
from graflow_scheduler.errors import GraphNotFound, RunNotFound, SpecError
from graflow_scheduler.plans import PlanCache, RunGraphs
from graflow_scheduler.runids import is_run_id
from graflow_scheduler.state import NodeCycle, RunStore, WaitToApply

log = structlog.get_logger(__name__)

Kind = feedback_pb2.FeedbackKind
# No ":" (the waits hash keeps answers under "<id>:r", child waits as "child:<run>") and no "@".
REQUEST_ID = re.compile(r"[A-Za-z0-9_.\-]{1,200}")
CHILD_PREFIX = "child:"
PROMPT_MAX = 16 * 1024
OPTIONS_MAX = 1000
OPTION_MAX = 1024
METADATA_MAX = 64 * 1024
TEXT_MAX = 64 * 1024
CUSTOM_MAX = 256 * 1024
REASON_MAX = 4096
RESPONDER_MAX = 256
LIST_DEFAULT, LIST_MAX = 100, 1000
TIMER_BATCH = 200
LIVE_STATUSES = ("RUNNING", "PAUSED")


class FeedbackNotFound(LookupError):
    pass


class FeedbackRejected(ValueError):
    """An answer that cannot be taken: ``code`` is the gRPC status to return."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _json_problem(raw: bytes, what: str, limit: int, *, object_only: bool = False) -> str | None:
    if len(raw) > limit:
        return f"{what} is {len(raw)} bytes; the limit is {limit}"
    try:
        value = json.loads(raw)
    except ValueError as exc:
        return f"{what} is not JSON: {exc}"
    if object_only and not isinstance(value, dict):
        return f"{what} must be a JSON object"
    return None


def request_problem(request: feedback_pb2.FeedbackRequest) -> str | None:
    """Why a task's feedback request cannot be recorded (None when it can)."""
    if not REQUEST_ID.fullmatch(request.request_id):
        return f"request_id {request.request_id[:64]!r} must be 1-200 letters, digits, '_', '-' or '.'"
    if request.kind not in Kind.values() or request.kind == Kind.FEEDBACK_KIND_UNSPECIFIED:
        return f"kind {request.kind} is not a FeedbackKind"
    if not request.prompt.strip():
        return "prompt is empty: say what the person is asked"
    if len(request.prompt) > PROMPT_MAX:
        return f"prompt is {len(request.prompt)} characters; the limit is {PROMPT_MAX}"
    if request.kind in (Kind.FEEDBACK_KIND_SELECTION, Kind.FEEDBACK_KIND_MULTI_SELECTION):
        options = list(request.options)
        if not options:
            return f"a {Kind.Name(request.kind)} request needs options"
        if len(options) > OPTIONS_MAX or any(not o or len(o) > OPTION_MAX for o in options):
            return f"options: at most {OPTIONS_MAX}, each 1-{OPTION_MAX} characters"
        if len(set(options)) != len(options):
            return "options repeat a choice"
    if request.metadata_json:
        problem = _json_problem(request.metadata_json, "metadata_json", METADATA_MAX, object_only=True)
        if problem:
            return problem
    if request.on_timeout not in feedback_pb2.FeedbackTimeoutAction.values():
        return f"on_timeout {request.on_timeout} is not a FeedbackTimeoutAction"
    return None


def response_problem(
    request: feedback_pb2.FeedbackRequest, response: feedback_pb2.FeedbackResponse
) -> str | None:
    """Why ``response`` does not answer ``request`` (None when it does)."""
    if response.request_id and response.request_id != request.request_id:
        return f"response.request_id {response.request_id!r} is not the request's id {request.request_id!r}"
    if len(response.reason) > REASON_MAX or len(response.responded_by) > RESPONDER_MAX:
        return f"reason and responded_by are limited to {REASON_MAX} and {RESPONDER_MAX} characters"
    kind = request.kind
    options = set(request.options)
    foreign = sorted(_answer_fields(response) - {_ANSWER_FIELDS.get(kind)})
    if foreign:
        return (
            f"this request asks for {Kind.Name(kind).removeprefix('FEEDBACK_KIND_').lower()}; "
            f"the answer sets {', '.join(foreign)}, which belong to other kinds"
        )
    if kind == Kind.FEEDBACK_KIND_APPROVAL:
        if not response.HasField("approved"):
            return "this request asks for approval: set response.approved (true or false)"
    elif kind == Kind.FEEDBACK_KIND_TEXT:
        if not response.text:
            return "this request asks for text: set response.text"
        if len(response.text) > TEXT_MAX:
            return f"text is {len(response.text)} characters; the limit is {TEXT_MAX}"
    elif kind == Kind.FEEDBACK_KIND_SELECTION:
        if response.selected not in options:
            return f"selected {response.selected!r} is not one of the options {sorted(options)}"
    elif kind == Kind.FEEDBACK_KIND_MULTI_SELECTION:
        chosen = list(response.selected_multiple)
        unknown = [c for c in chosen if c not in options]
        if unknown:
            return f"selected_multiple has {unknown} that are not among the options {sorted(options)}"
        if len(set(chosen)) != len(chosen):
            return "selected_multiple repeats a choice"
    elif kind == Kind.FEEDBACK_KIND_CUSTOM:
        if not response.custom_json:
            return "this request asks for a custom JSON value: set response.custom_json"
        return _json_problem(response.custom_json, "custom_json", CUSTOM_MAX)
    return None


def _now_ms() -> int:
    return int(time.time() * 1000)


# The answer field of each kind.
_ANSWER_FIELDS = {
    Kind.FEEDBACK_KIND_APPROVAL: "approved",
    Kind.FEEDBACK_KIND_TEXT: "text",
    Kind.FEEDBACK_KIND_SELECTION: "selected",
    Kind.FEEDBACK_KIND_MULTI_SELECTION: "selected_multiple",
    Kind.FEEDBACK_KIND_CUSTOM: "custom_json",
}


def _answer_fields(response: feedback_pb2.FeedbackResponse) -> set[str]:
    """The answer fields ``response`` sets (an empty multi-selection sets none: "none of them")."""
    found = {"approved"} if response.HasField("approved") else set()
    others = ("text", "selected", "selected_multiple", "custom_json")
    return found | {field for field in others if getattr(response, field)}


def _member(member: bytes) -> tuple[str, str]:
    run_id, _, wait_id = member.decode().partition("/")
    return run_id, wait_id


@dataclass
class WaitStats:
    answered: int = 0
    timed_out: int = 0
    children_ended: int = 0


class Waits(BackgroundLoop):
    """Feedback requests and answers, child runs, and the wait timer (a :class:`BackgroundLoop`)."""

    name = "wait-timer"

    def __init__(
        self,
        store: RunStore,
        plans: PlanCache,
        graphs: RunGraphs,
        dispatcher: Dispatcher,
        dynamic: DynamicNodes,
        *,
        interval_s: float = 0.5,
    ) -> None:
        self.store = store
        self.redis: aioredis.Redis = store.redis
        self.plans = plans
        self.graphs = graphs
        self.dispatcher = dispatcher
        self.dynamic = dynamic
        self.interval_s = interval_s
        self.stats = WaitStats()
        super().__init__()

    # ---- outcomes that wait ----
    async def prepare(
        self, outcome: messages_pb2.TaskOutcome, cycle: int
    ) -> WaitToApply | common_pb2.ErrorInfo:
        """What a WAITING outcome parks its node on, or the error that fails the node instead."""
        which = outcome.wait.WhichOneof("kind")
        if which == "feedback":
            request = feedback_pb2.FeedbackRequest()
            request.CopyFrom(outcome.wait.feedback)
            problem = request_problem(request)
            if problem:
                return common_pb2.ErrorInfo(type="InvalidFeedbackRequest", message=problem)
            now = _now_ms()
            request.run_id, request.node_id = outcome.run_id, outcome.node_id
            request.attempt, request.cycle, request.created_at_ms = outcome.attempt, cycle, now
            request.deadline_ms = now + request.timeout_ms if request.timeout_ms else 0
            request.ClearField("state")
            request.ClearField("response")
            return WaitToApply(
                request.request_id,
                request.SerializeToString(),
                feedback=True,
                deadline_ms=request.deadline_ms,
            )
        if which == "child_run_id":
            child = outcome.wait.child_run_id
            parent = (
                await self.redis.hmget(keys.run_meta(child), ["parent", "parent_node"])
                if is_run_id(child)
                else []
            )
            if parent != [outcome.run_id.encode(), outcome.node_id.encode()]:
                return common_pb2.ErrorInfo(
                    type="InvalidWait",
                    message=f"run {child[:64]!r} is not a child run started by node "
                    f"{outcome.node_id!r} of this run",
                )
            wait_id = CHILD_PREFIX + child
            return WaitToApply(wait_id, wait_id.encode(), feedback=False, child_meta_key=keys.run_meta(child))
        return common_pb2.ErrorInfo(
            type="InvalidWait", message="a WAITING outcome must say what it waits for"
        )

    # ---- the API ----
    async def _record(self, run_id: str, request_id: str) -> tuple[feedback_pb2.FeedbackRequest, str]:
        """The request with its state and answer, and its run's status."""
        if not REQUEST_ID.fullmatch(request_id):
            raise FeedbackNotFound(f"{request_id[:64]!r} is not a feedback request id")
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(keys.run_meta(run_id), "status")
            pipe.hmget(keys.run_waits(run_id), [request_id, f"{request_id}:r"])
            status, (raw, answer) = await pipe.execute()
        if status is None:
            raise RunNotFound(run_id)
        if raw is None:
            raise FeedbackNotFound(f"run {run_id} has no feedback request {request_id!r}")
        try:
            request = feedback_pb2.FeedbackRequest.FromString(raw)
        except DecodeError as exc:
            raise FeedbackNotFound(
                f"feedback request {request_id!r} of run {run_id} is unreadable: {exc}"
            ) from exc
        if answer is not None:
            request.state = feedback_pb2.FEEDBACK_STATE_ANSWERED
            request.response.ParseFromString(answer)
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hget(keys.run_state(run_id), request.node_id)
                pipe.hget(keys.run_waits(run_id), f"@{request.node_id}")
                state, current = await pipe.execute()
            waiting = (
                status.decode() in LIVE_STATUSES and state == b"WAITING" and current == request_id.encode()
            )
            request.state = (
                feedback_pb2.FEEDBACK_STATE_PENDING if waiting else feedback_pb2.FEEDBACK_STATE_CLOSED
            )
        return request, status.decode()

    async def get(self, run_id: str, request_id: str) -> feedback_pb2.FeedbackRequest:
        """Raises RunNotFound, FeedbackNotFound."""
        request, _ = await self._record(run_id, request_id)
        return request

    async def list_pending(self, run_id: str = "", limit: int = 0) -> list[feedback_pb2.FeedbackRequest]:
        """Pending requests, oldest first: of one run, or of every run."""
        limit = min(limit or LIST_DEFAULT, LIST_MAX)
        if run_id:
            if not await self.redis.exists(keys.run_meta(run_id)):
                raise RunNotFound(run_id)
            waits = await self.redis.hgetall(keys.run_waits(run_id))
            members = [(run_id, v.decode()) for k, v in waits.items() if k.startswith(b"@")]
        else:
            members = [_member(m) for m in await self.redis.zrange(keys.FEEDBACK_PENDING, 0, limit - 1)]
        found: list[feedback_pb2.FeedbackRequest] = []
        for member_run, request_id in members:
            with contextlib.suppress(RunNotFound, FeedbackNotFound):
                request, _ = await self._record(member_run, request_id)
                if request.state == feedback_pb2.FEEDBACK_STATE_PENDING:
                    found.append(request)
        found.sort(key=lambda r: r.created_at_ms)
        return found[:limit]

    async def respond(
        self, run_id: str, request_id: str, response: feedback_pb2.FeedbackResponse
    ) -> feedback_pb2.FeedbackRequest:
        """Answer a pending request and dispatch its node. Raises RunNotFound, FeedbackNotFound,
        FeedbackRejected."""
        request, _ = await self._record(run_id, request_id)
        problem = response_problem(request, response)
        if problem:
            raise FeedbackRejected(grpc.StatusCode.INVALID_ARGUMENT, problem)
        answer = feedback_pb2.FeedbackResponse()
        answer.CopyFrom(response)
        answer.request_id, answer.responded_at_ms = request_id, _now_ms()
        who = f" by {answer.responded_by}" if answer.responded_by else ""
        resolved = await self.store.resolve_wait(
            "answer",
            run_id,
            request.node_id,
            request_id,
            now_ms=answer.responded_at_ms,
            payload=answer.SerializeToString(),
            message=f"feedback '{request_id}' answered{who}",
        )
        if resolved.code == "answered":
            stored = feedback_pb2.FeedbackResponse.FromString(resolved.answer)
            same = feedback_pb2.FeedbackResponse()
            same.CopyFrom(answer)
            same.responded_at_ms = stored.responded_at_ms
            if same != stored:
                raise FeedbackRejected(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"feedback request {request_id!r} was answered already"
                    + (f" by {stored.responded_by}" if stored.responded_by else ""),
                )
        elif resolved.code == "closed":
            why = (
                "its node no longer waits for it (the request timed out)"
                if resolved.run_status in LIVE_STATUSES
                else f"run {run_id} ended ({resolved.run_status}) while it waited"
            )
            raise FeedbackRejected(
                grpc.StatusCode.FAILED_PRECONDITION, f"feedback request {request_id!r} is closed: {why}"
            )
        elif resolved.code == "resumed":
            self.stats.answered += 1
            log.info("feedback answered", run_id=run_id, node_id=request.node_id, request_id=request_id)
            await self._dispatch(run_id, request.node_id, resolved.attempt, resolved.cycle)
        return await self.get(run_id, request_id)

    async def cancel_children(self, run_id: str) -> None:
        """Cancel the child runs of canceled run ``run_id`` that have not ended, and theirs in turn
        (each one's cancel records its own children). ``cancel_run`` recorded the run in
        ``gf:children:cancel`` with its end, so the wait timer repeats this until it went through."""
        for raw in await self.redis.smembers(keys.run_children(run_id)):
            child = raw.decode()
            try:
                status = await self.store.cancel_run(
                    child, f"parent run {run_id} was canceled", now_ms=_now_ms()
                )
            except RunNotFound:
                continue  # expired: it ended long ago
            if status == "CANCELED":
                log.info("child run canceled with its parent", run_id=child, parent_run_id=run_id)
                await self.cancel_children(child)
        await self.redis.zrem(keys.CHILDREN_TO_CANCEL, run_id)

    # ---- dispatch of a resumed node ----
    async def _dispatch(self, run_id: str, node_id: str, attempt: int, cycle: NodeCycle) -> None:
        try:
            graph = (await self.graphs.hashes([run_id])).get(run_id)
            if graph is None:
                return
            plan = await self.plans.get(graph)
            found = await self.dynamic.load(run_id, [node_id], plan)
            task = task_of(plan, found, node_id)
            if task is None:
                return
            lost = int(await self.redis.hget(keys.run_joins(run_id), f"{node_id}:lost") or 0)
            await self.dispatcher.dispatch(
                [
                    delivery(
                        plan,
                        run_id,
                        node_id,
                        attempt,
                        task=task,
                        lost_attempts=lost,
                        cycle=cycle.cycle,
                        iteration_data_json=cycle.data_json,
                        feedback=cycle.feedback,
                    )
                ]
            )
        except (DownstreamUnavailable, grpc.aio.AioRpcError, GraphNotFound, SpecError) as exc:
            # The node is READY in Redis: the recovery sweep dispatches it.
            log.warning(
                "resumed node not dispatched yet; the recovery sweep will",
                run_id=run_id,
                node_id=node_id,
                error=str(exc),
            )

    # ---- the timer ----
    async def step(self) -> float:
        """One timer pass; the loop sleeps ``interval_s`` before the next (backs off on errors)."""
        await self.tick()
        return self.interval_s

    async def tick(self) -> None:
        """One pass: due deadlines, ended child runs, children of canceled runs. An entry that
        fails is logged and left for the next pass; the others go on."""
        now = _now_ms()
        due = await self.redis.zrange(keys.WAIT_DEADLINES, 0, now, byscore=True, offset=0, num=TIMER_BATCH)
        ended = await self.redis.zrange(keys.CHILDREN_ENDED, 0, TIMER_BATCH - 1)
        canceled = await self.redis.zrange(keys.CHILDREN_TO_CANCEL, 0, TIMER_BATCH - 1)
        steps: list[tuple[str, str, Coroutine[Any, Any, None]]] = [
            *(("deadline", m.decode(), self._deadline(*_member(m), now)) for m in due),
            *(("ended child run", r.decode(), self._child_ended(r.decode())) for r in ended),
            *(("children of a canceled run", r.decode(), self.cancel_children(r.decode())) for r in canceled),
        ]
        for index, (what, entry, step) in enumerate(steps):
            try:
                await step
            except (DownstreamUnavailable, *REDIS_UNAVAILABLE):
                for _, _, left in steps[index + 1 :]:
                    left.close()
                raise
            except Exception:  # noqa: BLE001 - one bad entry must not stall the others
                log.exception("wait timer entry failed; retried next pass", entry_kind=what, entry=entry)

    async def _deadline(self, run_id: str, wait_id: str, now: int) -> None:
        try:
            request, _ = await self._record(run_id, wait_id)
        except (RunNotFound, FeedbackNotFound):
            await self.redis.zrem(keys.WAIT_DEADLINES, f"{run_id}/{wait_id}")
            return
        seconds = request.timeout_ms / 1000
        payload = b""
        if request.on_timeout != feedback_pb2.FEEDBACK_TIMEOUT_ACTION_KEEP_WAITING:
            payload = messages_pb2.TaskOutcome(
                run_id=run_id,
                node_id=request.node_id,
                attempt=request.attempt,
                status=messages_pb2.TaskOutcome.STATUS_FAILED,
                error=common_pb2.ErrorInfo(
                    type="FeedbackTimeout",
                    message=f"feedback '{wait_id}' had no answer within {seconds:g} s",
                    retryable=False,
                ),
                worker_id="scheduler",
                finished_at_ms=now,
                wait=messages_pb2.Wait(feedback=feedback_pb2.FeedbackRequest(request_id=wait_id)),
            ).SerializeToString()
        resolved = await self.store.resolve_wait(
            "deadline",
            run_id,
            request.node_id,
            wait_id,
            now_ms=now,
            payload=payload,
            message=f"feedback '{wait_id}' had no answer within {seconds:g} s; it stays open",
        )
        if resolved.code in ("failing", "kept"):
            self.stats.timed_out += 1
            log.info(
                "feedback timed out",
                run_id=run_id,
                node_id=request.node_id,
                request_id=wait_id,
                action=resolved.code,
            )

    async def _child_ended(self, child: str) -> None:
        parent, node, status = await self.redis.hmget(
            keys.run_meta(child), ["parent", "parent_node", "status"]
        )
        if parent and node:
            resolved = await self.store.resolve_wait(
                "child",
                parent.decode(),
                node.decode(),
                CHILD_PREFIX + child,
                now_ms=_now_ms(),
                message=f"child run {child} ended {status.decode() if status else ''}".rstrip(),
            )
            if resolved.code == "resumed":
                self.stats.children_ended += 1
                log.info(
                    "parent node resumed: its child run ended",
                    run_id=parent.decode(),
                    node_id=node.decode(),
                    child_run_id=child,
                )
                await self._dispatch(parent.decode(), node.decode(), resolved.attempt, resolved.cycle)
        await self.redis.zrem(keys.CHILDREN_ENDED, child)
