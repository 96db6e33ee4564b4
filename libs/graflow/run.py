"""A handle on one run: its state, its events, its result (see :class:`graflow.Client`)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import structlog

from graflow.errors import GraflowError, GroupFailedError, RunCanceledError, RunFailedError, TaskError
from graflow.payload import decode_results
from graflow.typed import from_json
from graflow_api.v1 import common_pb2, scheduler_pb2, workflow_pb2

if TYPE_CHECKING:
    from graflow.client import Client

log = structlog.get_logger(__name__)

RunInfo = scheduler_pb2.Run
RunEvent = scheduler_pb2.RunEvent
RunResult = scheduler_pb2.RunResult
TERMINAL_EVENTS = frozenset(
    {RunEvent.TYPE_RUN_SUCCEEDED, RunEvent.TYPE_RUN_FAILED, RunEvent.TYPE_RUN_CANCELED}
)
ENDED_STATUSES = frozenset(
    {common_pb2.RUN_STATUS_SUCCEEDED, common_pb2.RUN_STATUS_FAILED, common_pb2.RUN_STATUS_CANCELED}
)
GROUP_FAILED = "GroupFailed"
# Longest wait of one WaitRun (or SubmitRun) call: waiting longer takes several calls.
WAIT_CALL_S = 60.0


def deadline_after(timeout: float | None) -> float | None:
    """A ``time.monotonic()`` deadline ``timeout`` seconds from now (None: no limit)."""
    return None if timeout is None else time.monotonic() + timeout


def wait_window(deadline: float | None) -> float:
    """Seconds one waiting call may wait: up to :data:`WAIT_CALL_S`, not past ``deadline``."""
    if deadline is None:
        return WAIT_CALL_S
    return max(0.0, min(WAIT_CALL_S, deadline - time.monotonic()))


def status_name(status: int) -> str:
    """``RUN_STATUS_FAILED`` -> ``"FAILED"``."""
    return common_pb2.RunStatus.Name(status).removeprefix("RUN_STATUS_")


def node_state_name(state: int) -> str:
    """``NODE_STATE_SUCCEEDED`` -> ``"SUCCEEDED"``."""
    return common_pb2.NodeState.Name(state).removeprefix("NODE_STATE_")


def event_type_name(event_type: int) -> str:
    """``TYPE_NODE_SUCCEEDED`` -> ``"NODE_SUCCEEDED"``."""
    return RunEvent.Type.Name(event_type).removeprefix("TYPE_")


def parse_status(status: str | int | None) -> int:
    """A run status from its name ("failed", "FAILED", "RUN_STATUS_FAILED") or enum value."""
    if status is None:
        return common_pb2.RUN_STATUS_UNSPECIFIED
    if isinstance(status, int):
        return status
    name = status.upper()
    name = name if name.startswith("RUN_STATUS_") else f"RUN_STATUS_{name}"
    try:
        return common_pb2.RunStatus.Value(name)
    except ValueError:
        choices = ", ".join(n.removeprefix("RUN_STATUS_").lower() for n in common_pb2.RunStatus.keys()[1:])
        raise ValueError(f"unknown run status {status!r}; use one of {choices}") from None


def sink_node_ids(spec: workflow_pb2.WorkflowSpec) -> list[str]:
    """Task nodes nothing depends on (used when the scheduler did not report the run's sinks)."""
    sources = {edge.from_id for edge in spec.edges if not edge.loop}
    grouped_with_successors = {m for g in spec.groups if g.id in sources for m in g.member_ids}
    return [n.id for n in spec.nodes if n.id not in sources and n.id not in grouped_with_successors]


class RunChannel:
    """Read access to a run's channel (the key/value space its tasks share)."""

    def __init__(self, client: Client, run_id: str) -> None:
        self._client = client
        self.run_id = run_id

    def get(self, key: str, default: Any = None) -> Any:
        return self._client.channel_get(self.run_id, [key]).get(key, default)

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Values of the keys that exist (expired and absent keys are left out)."""
        return self._client.channel_get(self.run_id, keys)

    def exists(self, key: str) -> bool:
        return key in self._client.channel_get(self.run_id, [key])

    def keys(self) -> list[str]:
        return self._client.channel_keys(self.run_id)

    def get_typed(self, key: str, cls: type[Any], default: Any = None) -> Any:
        """The value under ``key`` as a ``cls`` (a dataclass or a class with ``model_validate``)."""
        values = self._client.channel_get(self.run_id, [key])
        return from_json(cls, values[key]) if key in values else default


class Run:
    """One run. ``created`` and ``graph_hash`` are known when the handle comes from ``submit``."""

    def __init__(
        self,
        client: Client,
        run_id: str,
        *,
        created: bool | None = None,
        graph_hash: str = "",
        sink_node_ids: Iterable[str] = (),
    ) -> None:
        self._client = client
        self.id = run_id
        self.created = created
        self.graph_hash = graph_hash
        # The run's sinks as the scheduler reported them on submit (empty: not known yet).
        self.sink_node_ids = list(sink_node_ids)

    def __repr__(self) -> str:
        return f"<Run {self.id}>"

    def info(self) -> RunInfo:
        """The run's current state with its nodes (a ``scheduler_pb2.Run`` message)."""
        return self._client.get_run(self.id)

    @property
    def status(self) -> str:
        """The status name: RUNNING, SUCCEEDED, FAILED, CANCELED or PAUSED (one call per access)."""
        return status_name(self.info().status)

    def watch(self, cursor: str | None = None) -> Iterator[RunEvent]:
        """Events from ``cursor`` (exclusive; None = from the start) until the run ends."""
        return self._client.watch(self.id, cursor)

    def cancel(self, reason: str = "") -> RunInfo:
        return self._client.cancel(self.id, reason)

    def channel(self) -> RunChannel:
        return RunChannel(self._client, self.id)

    def results(self, node_ids: Iterable[str] | None = None) -> dict[str, Any]:
        """Results by node id (one call); ``None`` = every task node that succeeded so far."""
        if node_ids is None:
            info = self.info()
            node_ids = [
                n.node_id
                for n in info.nodes
                if n.kind != "group" and n.state == common_pb2.NODE_STATE_SUCCEEDED
            ]
        node_ids = list(node_ids)
        return self._client.get_results(self.id, node_ids) if node_ids else {}

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the end of the run and return its result: the value of its single sink node, or
        a dict node id -> value when it has several (sinks without a result, e.g. skipped by a
        terminate directive, are ``None`` / left out).

        Raises :class:`RunFailedError` (:class:`GroupFailedError` when a group's policy failed),
        :class:`RunCanceledError`, or :class:`TimeoutError` after ``timeout`` seconds.
        """
        return self.result_from(None, deadline_after(timeout), timeout)

    def result_from(self, answer: RunResult | None, deadline: float | None, timeout: float | None) -> Any:
        """The result from ``answer`` (a ``RunResult`` already received, None: none yet), waiting
        for the end with ``WaitRun`` calls until ``deadline`` (``time.monotonic()``; None: no limit).
        One call when the run ends within a call and its sinks' results come inline."""
        while answer is None or answer.run.status not in ENDED_STATUSES:
            if answer is not None and deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {self.id} did not finish within {timeout}s")
            answer = self._client.wait(self.id, wait_window(deadline))
        return self._ended(answer)

    # ---- outcome of an ended run ----
    def _ended(self, answer: RunResult) -> Any:
        run = answer.run
        sinks = list(run.sink_node_ids) or self.sink_node_ids
        if run.status == common_pb2.RUN_STATUS_SUCCEEDED and sinks and answer.results_inline:
            values = decode_results(answer.results)
            return values.get(sinks[0]) if len(sinks) == 1 else values
        if run.status == common_pb2.RUN_STATUS_FAILED and run.error.type == GROUP_FAILED:
            return self._outcome(self.info())  # the members' states are in the nodes
        # Results too large to come inline (read them), a cancel, a failure.
        return self._outcome(run)

    def _sink_values(self, sinks: list[str]) -> Any:
        values = self._client.get_results(self.id, sinks)
        return values.get(sinks[0]) if len(sinks) == 1 else values

    def _outcome(self, info: RunInfo) -> Any:
        if info.status == common_pb2.RUN_STATUS_SUCCEEDED:
            sinks = list(info.sink_node_ids) or sink_node_ids(self._client.get_graph(info.graph_hash))
            return self._sink_values(sinks)
        if info.status == common_pb2.RUN_STATUS_CANCELED:
            why = info.message or info.error.message or "no reason given"
            raise RunCanceledError(self.id, f"run {self.id} was canceled: {why}")
        if info.status == common_pb2.RUN_STATUS_FAILED:
            raise self._failure(info)
        raise RuntimeError(f"run {self.id} has not ended (status {status_name(info.status)})")

    def _failure(self, info: RunInfo) -> RunFailedError:
        error = TaskError(
            info.failed_node_id, info.error.type or "Error", info.error.message, info.error.traceback
        )
        if info.error.type != GROUP_FAILED:
            return RunFailedError(self.id, error)
        members = self._group_members(info)
        failed = [
            TaskError(n.node_id, n.error.type, n.error.message, n.error.traceback)
            for n in info.nodes
            if n.node_id in members and n.state == common_pb2.NODE_STATE_FAILED
        ]
        succeeded = [
            n.node_id
            for n in info.nodes
            if n.node_id in members and n.state == common_pb2.NODE_STATE_SUCCEEDED
        ]
        return GroupFailedError(self.id, error, failed, succeeded)

    def _group_members(self, info: RunInfo) -> set[str]:
        """Members of the failed group from the stored graph, or every task node if it can't be read."""
        try:
            spec = self._client.get_graph(info.graph_hash)
        except GraflowError as exc:
            log.warning(
                "graph unavailable; reporting every task node of the failed group's run",
                run_id=self.id,
                error=str(exc),
            )
            return {n.node_id for n in info.nodes if n.kind != "group"}
        return {m for g in spec.groups if g.id == info.failed_node_id for m in g.member_ids}
