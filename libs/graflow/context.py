"""What a running task can see and do: :class:`TaskContext` (``@task(inject_context=True)``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import structlog

_MISSING = object()


class ChannelBackend(Protocol):
    """Storage of a run's channel; the worker supplies one backed by the result-store."""

    def get_many(self, keys: list[str]) -> dict[str, Any]: ...

    def set_many(self, values: dict[str, Any], ttl_s: float | None) -> None: ...

    def delete(self, keys: list[str]) -> int: ...

    def keys(self) -> list[str]: ...


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


@dataclass
class TaskContext:
    """Identity of the running attempt, its logger and the run's channel."""

    run_id: str
    node_id: str
    task_type: str
    attempt: int
    max_attempts: int
    worker_id: str
    channel: Channel
    cycle: int = 0

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
