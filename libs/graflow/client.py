"""The synchronous client of a Graflow deployment: submit runs, watch them, read their results.

    with Client() as client:              # GRAFLOW_CLIENT_SCHEDULER_ADDRESS etc. or 127.0.0.1 defaults
        run = client.submit(wf)
        for event in run.watch(): ...
        value = run.result(timeout=60)

Every call has a deadline (``timeout``) and sends ``authorization: Bearer <token>`` when a token is
set. With a CA (``tls_ca_file`` or ``GRAFLOW_CLIENT_TLS_CA_FILE``) the channels use TLS and verify the
servers against it; ``tls_cert_file``/``tls_key_file`` (or ``GRAFLOW_CLIENT_TLS_CERT_FILE``/
``..._KEY_FILE``) add a client certificate for servers that require one (mTLS). Unreachable
services raise :class:`ServiceUnavailableError` naming the address. Status and run information
are the contract's messages: :meth:`Client.get_run` returns a ``graflow_api.v1.scheduler_pb2.Run``
(alias :data:`RunInfo`); :attr:`Run.status` is its status name ("RUNNING", "SUCCEEDED", "FAILED",
"CANCELED", "PAUSED").
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import grpc

from graflow import payload
from graflow._transport import Endpoint, ErrorMap, client_credentials
from graflow.dsl import Workflow
from graflow.errors import (
    FeedbackError,
    RunNotFoundError,
    ServiceUnavailableError,
    WorkflowDefinitionError,
    WorkflowNotFoundError,
)
from graflow.errors import ServiceCallError as ServiceCallError  # re-exported: its import path before 0.10
from graflow.feedback import NOT_GIVEN, build_response
from graflow.registry import WorkflowRegistryCalls, spec_of
from graflow.run import (
    ENDED_STATUSES,
    TERMINAL_EVENTS,
    Run,
    RunEvent,
    RunInfo,
    RunResult,
    deadline_after,
    parse_status,
    wait_window,
)
from graflow_api.v1 import common_pb2, feedback_pb2, result_store_pb2, scheduler_pb2, workflow_pb2
from graflow_runtime.backoff import backoff_delay

# A watch stream is reopened from its cursor at least this often, so it always has a deadline.
WATCH_STREAM_S = 60.0
# Consecutive reconnections of a dropped watch stream (UNAVAILABLE) before giving up.
WATCH_RETRIES = 8


class Client(WorkflowRegistryCalls):
    """Talks to the scheduler (runs, registered workflows) and the result-store (results, channels,
    graphs)."""

    def __init__(
        self,
        scheduler: str | None = None,
        result_store: str | None = None,
        *,
        auth_token: str | None = None,
        timeout: float = 10.0,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
    ) -> None:
        self.timeout = timeout
        tls = client_credentials(tls_ca_file, tls_cert_file, tls_key_file)
        self._scheduler = Endpoint(
            "scheduler", scheduler, auth_token=auth_token, timeout=timeout, credentials=tls
        )
        self._result_store = Endpoint(
            "result-store", result_store, auth_token=auth_token, timeout=timeout, credentials=tls
        )

    @property
    def scheduler_address(self) -> str:
        return self._scheduler.address

    @property
    def result_store_address(self) -> str:
        return self._result_store.address

    # ---- runs ----
    def submit(
        self,
        workflow_or_spec: Workflow | workflow_pb2.WorkflowSpec,
        *,
        idempotency_key: str | None = None,
        labels: Mapping[str, str] | None = None,
        arguments: Mapping[str, Any] | None = None,
    ) -> Run:
        """Start a run. An invalid workflow raises :class:`WorkflowDefinitionError` with the server's
        reason; with ``idempotency_key`` a repeated submit returns the first run (``created`` False).
        Without one the submit gets a key of its own, so that the call retried on another
        scheduler replica (:mod:`graflow_runtime.grpc_options`) never starts two runs.
        ``arguments`` (JSON values by name) are the run's first channel values: a task parameter
        of the same name without a bound argument receives one."""
        run, _ = self._submit(workflow_or_spec, idempotency_key, labels, wait_s=0.0, arguments=arguments)
        return run

    def submit_registered(
        self,
        name: str,
        *,
        arguments: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Run:
        """Start a run of the workflow registered as ``name`` (:meth:`register_workflow`), its
        registered defaults overridden by ``arguments``. Raises :class:`WorkflowNotFoundError`."""
        run, _ = self._submit(name, idempotency_key, labels, wait_s=0.0, arguments=arguments)
        return run

    def submit_and_wait(
        self,
        workflow_or_spec: Workflow | workflow_pb2.WorkflowSpec,
        *,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Any:
        """Start a run and return its result: ``submit(...).result(timeout)`` in one call to the
        scheduler when the run ends within it (and :data:`graflow.run.WAIT_CALL_S`) and its
        result is at most 1 MiB. Same result and errors as :meth:`Run.result`."""
        deadline = deadline_after(timeout)
        run, answer = self._submit(
            workflow_or_spec, idempotency_key, labels, wait_s=wait_window(deadline)
        )
        return run.result_from(answer, deadline, timeout)

    def _submit(
        self,
        workflow_or_spec: Workflow | workflow_pb2.WorkflowSpec | str,
        idempotency_key: str | None,
        labels: Mapping[str, str] | None,
        *,
        wait_s: float,
        arguments: Mapping[str, Any] | None = None,
    ) -> tuple[Run, scheduler_pb2.RunResult | None]:
        # A key made here names this call only: a run found under it was created by an earlier
        # attempt of this call (one that a dying replica answered UNAVAILABLE), so it is "created".
        generated = not idempotency_key
        request = scheduler_pb2.SubmitRunRequest(
            idempotency_key=idempotency_key or f"sdk-{uuid.uuid4().hex}",
            labels=dict(labels or {}),
            wait_ms=_ms(wait_s),
            arguments_json=payload.dumps(dict(arguments)) if arguments else b"",
        )
        if isinstance(workflow_or_spec, str):
            request.workflow = workflow_or_spec
        else:
            request.spec.CopyFrom(spec_of(workflow_or_spec, "submit()"))
        response = self._scheduler.call(
            "SubmitRun",
            request,
            {
                grpc.StatusCode.INVALID_ARGUMENT: WorkflowDefinitionError,
                grpc.StatusCode.NOT_FOUND: WorkflowNotFoundError,
            },
            wait_s=wait_s,
        )
        run = Run(
            self,
            response.run_id,
            created=response.created or generated,
            graph_hash=response.graph_hash,
            sink_node_ids=response.sink_node_ids,
        )
        return run, response.result if response.HasField("result") else None

    def run(self, run_id: str) -> Run:
        """A handle on an existing run (no call is made)."""
        return Run(self, run_id)

    def get_run(self, run_id: str) -> RunInfo:
        """The run's state and its nodes' states. Raises :class:`RunNotFoundError`."""
        return self._scheduler.call("GetRun", scheduler_pb2.GetRunRequest(run_id=run_id), _not_found(run_id))

    def list_runs(
        self,
        limit: int = 50,
        status: str | int | None = None,
        *,
        workflow: str = "",
        labels: Mapping[str, str] | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
    ) -> list[RunInfo]:
        """Runs newest first (without their node lists), up to ``limit``, optionally only those
        with ``status``, of ``workflow``, with every one of ``labels``, created at or after
        ``created_after`` and before ``created_before`` (Unix seconds). A filtered listing
        examines a bounded number of runs per call, so this follows the pages until ``limit``."""
        request = scheduler_pb2.ListRunsRequest(
            limit=limit,
            status=parse_status(status),
            workflow_name=workflow,
            labels=dict(labels or {}),
            created_after_ms=_ms(created_after or 0),
            created_before_ms=_ms(created_before or 0),
        )
        runs: list[RunInfo] = []
        while len(runs) < limit:
            request.limit = limit - len(runs)
            page = self._scheduler.call("ListRuns", request)
            runs += page.runs
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
        return runs

    def count_runs(self) -> dict[str, int]:
        """Retained runs by status name ("RUNNING", "SUCCEEDED", ...; only those that have
        runs), and ``"TOTAL"``."""
        response = self._scheduler.call("CountRuns", scheduler_pb2.CountRunsRequest())
        counts = {
            common_pb2.RunStatus.Name(c.status).removeprefix("RUN_STATUS_"): c.count for c in response.counts
        }
        return {**counts, "TOTAL": response.total}

    def wait(self, run_id: str, wait_s: float) -> RunResult:
        """One ``WaitRun`` call: the run's end with its sinks' results inline when small (a
        ``scheduler_pb2.RunResult``), or its live state (RUNNING, PAUSED) once ``wait_s`` seconds
        passed. Raises :class:`RunNotFoundError`."""
        request = scheduler_pb2.WaitRunRequest(run_id=run_id, wait_ms=_ms(wait_s))
        return self._scheduler.call("WaitRun", request, _not_found(run_id), wait_s=wait_s)

    def cancel(self, run_id: str, reason: str = "") -> RunInfo:
        """Cancel a run; canceling an ended run changes nothing. Returns the run's state."""
        request = scheduler_pb2.CancelRunRequest(run_id=run_id, reason=reason)
        return self._scheduler.call("CancelRun", request, _not_found(run_id))

    def watch(
        self,
        run_id: str,
        cursor: str | None = None,
        *,
        deadline: float | None = None,
        types: Iterable[int] | None = None,
    ) -> Iterator[RunEvent]:
        """Events of a run from ``cursor`` until its terminal event (only those of ``types``, the
        ``RunEvent.Type`` values, when given). A dropped stream is resumed from the last cursor (at
        most :data:`WATCH_RETRIES` times in a row). ``deadline`` is a ``time.monotonic()`` value;
        reaching it raises :class:`TimeoutError`."""
        retries = 0
        cursor = cursor or ""
        wanted = sorted(types or ())
        while True:
            stream_s = WATCH_STREAM_S
            if deadline is not None:
                stream_s = min(stream_s, deadline - time.monotonic())
                if stream_s <= 0:
                    raise TimeoutError(f"run {run_id} did not finish in time (last event cursor {cursor!r})")
            request = scheduler_pb2.WatchRunRequest(run_id=run_id, cursor=cursor, types=wanted)
            stream = self._scheduler.stub.WatchRun(
                request, timeout=stream_s, metadata=self._scheduler.metadata
            )
            try:
                for event in stream:
                    retries = 0
                    cursor = event.cursor or cursor
                    yield event
                    if event.type in TERMINAL_EVENTS:
                        return
                if self.get_run(run_id).status in ENDED_STATUSES:
                    return  # the server closed a finished run's stream; nothing more will come
                retries += 1
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue  # our own stream refresh, or the caller's deadline (checked above)
                if code != grpc.StatusCode.UNAVAILABLE:
                    raise self._scheduler.error("WatchRun", exc, _not_found(run_id)) from None
                retries += 1
                if retries > WATCH_RETRIES:
                    raise self._scheduler.error("WatchRun", exc) from None
            finally:
                stream.cancel()
            if retries > WATCH_RETRIES:
                raise ServiceUnavailableError(
                    "scheduler",
                    self._scheduler.address,
                    f"the watch stream of run {run_id} keeps closing early",
                )
            time.sleep(backoff_delay(retries))

    # ---- results, graphs, channels ----
    def get_results(self, run_id: str, node_ids: Iterable[str]) -> dict[str, Any]:
        """Decoded results of ``node_ids`` in one call; nodes without a result are left out."""
        request = result_store_pb2.GetResultsRequest(run_id=run_id, node_ids=list(node_ids))
        response = self._result_store.call("GetResults", request)
        return payload.decode_results(response.results)

    def get_graph(self, graph_hash: str) -> workflow_pb2.WorkflowSpec:
        request = result_store_pb2.GetGraphRequest(graph_hash=graph_hash)
        return self._result_store.call("GetGraph", request).spec

    def channel_get(self, run_id: str, keys: Iterable[str]) -> dict[str, Any]:
        request = result_store_pb2.ChannelGetRequest(run_id=run_id, keys=list(keys))
        return {
            e.key: payload.decode(e.value) for e in self._result_store.call("ChannelGet", request).entries
        }

    def channel_keys(self, run_id: str) -> list[str]:
        request = result_store_pb2.ChannelKeysRequest(run_id=run_id)
        return list(self._result_store.call("ChannelKeys", request).keys)

    # ---- human feedback ----
    def list_feedback(self, run_id: str = "", limit: int = 100) -> list[feedback_pb2.FeedbackRequest]:
        """Feedback requests waiting for an answer (of one run, or of all), oldest first."""
        request = scheduler_pb2.ListFeedbackRequest(run_id=run_id, limit=limit)
        return list(self._scheduler.call("ListFeedback", request, _not_found(run_id)).requests)

    def get_feedback(self, run_id: str, request_id: str) -> feedback_pb2.FeedbackRequest:
        """One request with its state (PENDING, ANSWERED, CLOSED) and answer."""
        request = scheduler_pb2.GetFeedbackRequest(run_id=run_id, request_id=request_id)
        return self._scheduler.call("GetFeedback", request, _feedback_errors())

    def respond_feedback(
        self,
        run_id: str,
        request_id: str,
        *,
        approved: bool | None = None,
        text: str | None = None,
        selected: str | None = None,
        selected_multiple: Iterable[str] | None = None,
        custom_data: Any = NOT_GIVEN,
        reason: str = "",
        responded_by: str = "",
    ) -> feedback_pb2.FeedbackRequest:
        """Answer a pending request (set the field of its kind); its node runs again with the
        answer. Raises :class:`FeedbackError` when the answer is refused (with the reason)."""
        response = build_response(
            approved=approved,
            text=text,
            selected=selected,
            selected_multiple=selected_multiple,
            custom_data=custom_data,
            reason=reason,
            responded_by=responded_by,
        )
        request = scheduler_pb2.RespondFeedbackRequest(
            run_id=run_id, request_id=request_id, response=response
        )
        return self._scheduler.call("RespondFeedback", request, _feedback_errors())

    def close(self) -> None:
        self._scheduler.close()
        self._result_store.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


def _not_found(run_id: str) -> ErrorMap:
    """NOT_FOUND, and INVALID_ARGUMENT for a malformed id, both mean "no such run" to the caller."""

    def error(details: str) -> RunNotFoundError:
        return RunNotFoundError(f"no run with id {run_id!r}: {details}")

    return {grpc.StatusCode.NOT_FOUND: error, grpc.StatusCode.INVALID_ARGUMENT: error}


def _feedback_errors() -> ErrorMap:
    codes = (
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    return {code: FeedbackError for code in codes}
