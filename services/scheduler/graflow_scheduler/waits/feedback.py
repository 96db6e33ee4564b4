"""Feedback requests (docs/architecture.md, "Waits"): reading them (``GetFeedback``,
``ListFeedback``), answering them (``RespondFeedback``: the node resumes with the answer) and
their deadlines (the node fails with FeedbackTimeout, or keeps waiting)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import grpc
import structlog
from google.protobuf.message import DecodeError

from graflow_api.v1 import common_pb2, feedback_pb2, messages_pb2
from graflow_runtime import keys
from graflow_runtime.errors import NotFound

from graflow_scheduler.errors import FeedbackNotFound, FeedbackRejected, RunNotFound
from graflow_scheduler.state.store import RunStore
from graflow_scheduler.state.views import LIVE_STATUSES
from graflow_scheduler.waits.resume import ResumedNodes
from graflow_scheduler.waits.validation import REQUEST_ID, response_problem

log = structlog.get_logger(__name__)

LIST_DEFAULT, LIST_MAX = 100, 1000


def parse_member(member: bytes) -> tuple[str, str]:
    """Run id and wait id of a member of a cell's ``feedback:pending`` or ``waits:deadlines``."""
    run_id, _, wait_id = member.decode().partition("/")
    return run_id, wait_id


def _decoded(
    run_id: str, request_id: str, status: bytes | None, raw: bytes | None
) -> feedback_pb2.FeedbackRequest:
    """The stored request ``raw``; raises RunNotFound (no ``status``: no run), FeedbackNotFound."""
    if status is None:
        raise RunNotFound(run_id)
    if raw is None:
        raise FeedbackNotFound(f"run {run_id} has no feedback request {request_id!r}")
    try:
        return feedback_pb2.FeedbackRequest.FromString(raw)
    except DecodeError as exc:
        raise FeedbackNotFound(
            f"feedback request {request_id!r} of run {run_id} is unreadable: {exc}"
        ) from exc


class FeedbackRequests:
    def __init__(self, store: RunStore, resumed: ResumedNodes) -> None:
        self.store = store
        self.redis = store.redis
        self.resumed = resumed

    async def _record(self, run_id: str, request_id: str) -> tuple[feedback_pb2.FeedbackRequest, str]:
        """The request with its state and answer, and its run's status."""
        if not REQUEST_ID.fullmatch(request_id):
            raise FeedbackNotFound(f"{request_id[:64]!r} is not a feedback request id")
        (record,) = await self._records([(run_id, request_id)])
        if isinstance(record, NotFound):
            raise record
        return record

    async def _records(
        self, members: Sequence[tuple[str, str]]
    ) -> list[tuple[feedback_pb2.FeedbackRequest, str] | NotFound]:
        """:meth:`_record` of each (run id, request id), or why it cannot be read, in two round
        trips however many there are (one per request made ListFeedback take seconds)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for run_id, request_id in members:
                pipe.hget(keys.run_meta(run_id), "status")
                pipe.hmget(keys.run_waits(run_id), [request_id, f"{request_id}:r"])
            stored = await pipe.execute()
        records: list[tuple[feedback_pb2.FeedbackRequest, str] | NotFound] = []
        unanswered: list[tuple[str, str, feedback_pb2.FeedbackRequest, str]] = []
        replies = zip(members, stored[::2], stored[1::2], strict=True)
        for (run_id, request_id), status, (raw, answer) in replies:
            try:
                request = _decoded(run_id, request_id, status, raw)
            except NotFound as exc:
                records.append(exc)
                continue
            records.append((request, status.decode()))
            if answer is not None:
                request.state = feedback_pb2.FEEDBACK_STATE_ANSWERED
                request.response.ParseFromString(answer)
            else:
                unanswered.append((run_id, request_id, request, status.decode()))
        if unanswered:
            async with self.redis.pipeline(transaction=False) as pipe:
                for run_id, _, request, _ in unanswered:
                    pipe.hget(keys.run_state(run_id), request.node_id)
                    pipe.hget(keys.run_waits(run_id), f"@{request.node_id}")
                nodes = await pipe.execute()
            for (_, request_id, request, status), state, current in zip(
                unanswered, nodes[::2], nodes[1::2], strict=True
            ):
                waiting = status in LIVE_STATUSES and state == b"WAITING" and current == request_id.encode()
                request.state = (
                    feedback_pb2.FEEDBACK_STATE_PENDING if waiting else feedback_pb2.FEEDBACK_STATE_CLOSED
                )
        return records

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
            members = await self._oldest_pending(limit)
        records = await self._records([member for member in members if REQUEST_ID.fullmatch(member[1])])
        found = [
            record[0]
            for record in records
            if not isinstance(record, NotFound) and record[0].state == feedback_pb2.FEEDBACK_STATE_PENDING
        ]
        found.sort(key=lambda r: r.created_at_ms)
        return found[:limit]

    async def _oldest_pending(self, limit: int) -> list[tuple[str, str]]:
        """(run id, request id) of the ``limit`` oldest pending requests of every cell (each
        cell's oldest ``limit``, in one pipeline, merged by creation time)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for cell in keys.cells():
                pipe.zrange(keys.feedback_pending(cell), 0, limit - 1, withscores=True)
            replies = await pipe.execute()
        rows = sorted((score, member) for reply in replies for member, score in reply)
        return [parse_member(member) for _, member in rows[:limit]]

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
        answer.request_id, answer.responded_at_ms = request_id, int(time.time() * 1000)
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
            log.info("feedback answered", run_id=run_id, node_id=request.node_id, request_id=request_id)
            await self.resumed.dispatch(run_id, request.node_id, resolved.attempt, resolved.cycle)
        return await self.get(run_id, request_id)

    async def time_out(self, run_id: str, wait_id: str, now: int) -> None:
        """The deadline of request ``wait_id`` is due: its node fails with FeedbackTimeout (an outcome
        appended to the outcome stream, applied like any failure) or keeps waiting."""
        try:
            request, _ = await self._record(run_id, wait_id)
        except (RunNotFound, FeedbackNotFound):
            await self.redis.zrem(keys.wait_deadlines(keys.cell_of(run_id)), f"{run_id}/{wait_id}")
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
            log.info(
                "feedback timed out",
                run_id=run_id,
                node_id=request.node_id,
                request_id=wait_id,
                action=resolved.code,
            )
