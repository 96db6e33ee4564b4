"""The operators' client of the coordinator: live workers, queues, dead letters and the audit log.

    with Operators() as ops:                       # GRAFLOW_CLIENT_COORDINATOR_ADDRESS or 127.0.0.1:50052
        for worker in ops.workers(): ...
        for letter in ops.dead_letters(limit=20): ...
        ops.replay_dead_letters(["1700000000000-0"])
        ops.delete_dead_letters(["1700000000001-0"])
        for queue in ops.queues(): ...
        for event in ops.audit_events(limit=50): ...

Like :class:`graflow.Client`: every call has a deadline, sends the bearer token when one is set
(``GRAFLOW_CLIENT_AUTH_TOKEN``), uses TLS when given a CA, and raises
:class:`ServiceUnavailableError` when the coordinator does not answer, :class:`ServiceCallError`
when it refuses a call. Workers and dead letters are the
contract's messages (``graflow_api.v1.coordinator_pb2.WorkerInfo``, ``messages_pb2.DeadLetter``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import grpc

from graflow._transport import Endpoint, client_credentials
from graflow.errors import DeadLetterNotFoundError
from graflow_api.v1 import coordinator_pb2, messages_pb2
from graflow_runtime.limits import DEAD_LETTERS_PAGE_MAX

WorkerInfo = coordinator_pb2.WorkerInfo
AuditEvent = coordinator_pb2.AuditEvent
DeadLetter = messages_pb2.DeadLetter
QueueStats = coordinator_pb2.QueueStats


class Operators:
    """Talks to the coordinator on behalf of an operator."""

    def __init__(
        self,
        coordinator: str | None = None,
        *,
        auth_token: str | None = None,
        timeout: float = 10.0,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
    ) -> None:
        """TLS as for :class:`graflow.Client` (``GRAFLOW_CLIENT_TLS_*_FILE`` for files left None)."""
        self._coordinator = Endpoint(
            "coordinator",
            coordinator,
            auth_token=auth_token,
            timeout=timeout,
            credentials=client_credentials(tls_ca_file, tls_cert_file, tls_key_file),
        )

    @property
    def coordinator_address(self) -> str:
        return self._coordinator.address

    def workers(self) -> list[WorkerInfo]:
        """Live workers (lease not expired), as the coordinator knows them."""
        return list(self._coordinator.call("ListWorkers", coordinator_pb2.ListWorkersRequest()).workers)

    def dead_letters(self, *, limit: int = 100, after_id: str = "") -> list[DeadLetter]:
        """Dead letters, oldest first, at most ``limit`` (0 = all), after ``after_id`` (exclusive)."""
        return list(self.iter_dead_letters(limit=limit, after_id=after_id))

    def iter_dead_letters(self, *, limit: int = 0, after_id: str = "") -> Iterator[DeadLetter]:
        """Dead letters page by page, oldest first (``limit`` 0 = all)."""
        yielded = 0
        while limit <= 0 or yielded < limit:
            page_size = DEAD_LETTERS_PAGE_MAX if limit <= 0 else min(DEAD_LETTERS_PAGE_MAX, limit - yielded)
            request = coordinator_pb2.ListDeadLettersRequest(limit=page_size, after_id=after_id)
            page = self._coordinator.call("ListDeadLetters", request).dead_letters
            if not page:  # a short page is not the end: the coordinator bounds a page's bytes too
                return
            yield from page
            yielded += len(page)
            after_id = page[-1].id

    def dead_letter(self, letter_id: str) -> DeadLetter:
        """One dead letter; raises :class:`DeadLetterNotFoundError`."""
        request = coordinator_pb2.ListDeadLettersRequest(ids=[letter_id])
        found = self._coordinator.call("ListDeadLetters", request).dead_letters
        if not found:
            raise DeadLetterNotFoundError(
                f"no dead letter {letter_id!r} at the coordinator {self.coordinator_address} "
                "(already replayed, or never existed); list them with `graflow dead-letters list`"
            )
        return found[0]

    def replay_dead_letters(self, ids: Iterable[str] = (), *, replay_all: bool = False) -> int:
        """Put dead letters back on their queues; returns how many were replayed. Naming an id that
        does not exist replays nothing and raises :class:`DeadLetterNotFoundError`. With
        ``replay_all``, every dead letter: the coordinator replays a page per call and answers where
        the next one starts, so this calls it until the end (letters it cannot replay stay in place)."""
        request = coordinator_pb2.ReplayDeadLettersRequest(ids=list(ids), all=replay_all)
        replayed = 0
        while True:
            response = self._coordinator.call(
                "ReplayDeadLetters", request, {grpc.StatusCode.NOT_FOUND: DeadLetterNotFoundError}
            )
            replayed += response.replayed
            if not response.next_after_id:
                return replayed
            request.after_id = response.next_after_id

    def delete_dead_letters(self, ids: Iterable[str]) -> tuple[int, int]:
        """Remove dead letters for good (at most 1,000 ids a call): (deleted, not found). Ids that
        are not there (replayed or deleted meanwhile) are counted, not an error."""
        request = coordinator_pb2.DeleteDeadLettersRequest(ids=list(ids))
        response = self._coordinator.call("DeleteDeadLetters", request)
        return response.deleted, response.not_found

    def queues(self) -> list[QueueStats]:
        """Every queue with its depth, lag, pending entries and live workers, by name."""
        return list(self._coordinator.call("ListQueues", coordinator_pb2.ListQueuesRequest()).queues)

    def audit_events(self, *, limit: int = 100, before_id: str = "") -> list[AuditEvent]:
        """Mutating actions of every service, newest first, at most ``limit`` (at most 1,000 a
        call), older than ``before_id`` (exclusive); docs/security.md, "Audit log"."""
        request = coordinator_pb2.ListAuditEventsRequest(limit=limit, before_id=before_id)
        return list(self._coordinator.call("ListAuditEvents", request).events)

    def close(self) -> None:
        self._coordinator.close()

    def __enter__(self) -> Operators:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
