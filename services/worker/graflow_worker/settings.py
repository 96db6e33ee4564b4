"""Worker settings: ``GRAFLOW_WORKER_*`` environment variables on top of the common ones."""

from __future__ import annotations

import os
import secrets
import socket
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from graflow_runtime.addresses import (
    DEFAULT_COORDINATOR_ADDRESS,
    DEFAULT_RESULT_STORE_ADDRESS,
    DEFAULT_SCHEDULER_ADDRESS,
)
from graflow_runtime.limits import MAX_INLINE_RESULT_BYTES
from graflow_runtime.settings import BusSettings, ServiceAddress, settings_config, split_list

_TASK_MODULES_HINT = (
    "set GRAFLOW_WORKER_TASK_MODULES to a comma-separated list of modules that define @task "
    "functions (e.g. graflow_examples.etl); the worker runs only tasks registered from them"
)


def default_worker_id() -> str:
    """``<hostname>-<pid>-<4 random hex>``: unique per process, stable for its lifetime."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class WorkerSettings(BusSettings):
    model_config = settings_config("GRAFLOW_WORKER_")

    # Consumer name in the queue groups and identity towards the coordinator. Keep it stable across
    # restarts of one deployment slot to resume the work this worker held when it stopped.
    worker_id: str = Field(default_factory=default_worker_id, min_length=1)
    queues: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["default"])
    task_modules: Annotated[list[str], NoDecode] = Field(default_factory=list, validate_default=True)
    # Deliveries held at once (running or waiting for their commit); also the thread-pool size.
    # It also bounds the read and commit batches: with 8, tiny tasks spent most of their time in
    # per-batch costs (a GetResults and a PutResults per handful of tasks), so the default is 64.
    concurrency: int = Field(default=64, ge=1)
    coordinator_address: ServiceAddress = DEFAULT_COORDINATOR_ADDRESS
    result_store_address: ServiceAddress = DEFAULT_RESULT_STORE_ADDRESS
    # Child runs (ctx.run_child / ctx.start_child) are started through the scheduler.
    scheduler_address: ServiceAddress = DEFAULT_SCHEDULER_ADDRESS
    # gRPC health endpoint; port 0 picks a free port (reported to the coordinator).
    health_listen_address: str = "127.0.0.1:0"
    # How long one XREADGROUP blocks waiting for new entries. Keep it below the coordinator's lease
    # minus its heartbeat interval: Redis serves a blocked read even while the process is paused
    # (SIGSTOP), so a longer block lets a worker reaped for missing its lease still take a delivery
    # (the coordinator reclaims it from the orphaned consumer, but only after another lease).
    read_block_ms: int = Field(default=1000, ge=1)
    # Most finished attempts committed by one PutResults + MULTI.
    commit_batch_max: int = Field(default=256, ge=1)
    # Results whose encoded size (NodeResult bytes) is at most this travel inline in the outcome and
    # are stored by the scheduler when it applies the outcome: no PutResults, and the result-store
    # need not be up to commit them. Larger ones go through PutResults first. 0 = always PutResults.
    inline_result_max_bytes: int = Field(default=64 * 1024, ge=0, le=MAX_INLINE_RESULT_BYTES)
    # Frames kept in the traceback summary of a failed task.
    traceback_frames: int = Field(default=8, ge=1)

    @field_validator("queues", mode="before")
    @classmethod
    def _parse_queues(cls, value: Any) -> Any:
        value = split_list(value)
        if isinstance(value, list) and not value:
            raise ValueError("at least one queue is needed (comma-separated, e.g. 'default,reports')")
        return value

    @field_validator("task_modules", mode="before")
    @classmethod
    def _parse_task_modules(cls, value: Any) -> Any:
        value = split_list(value)
        if isinstance(value, list) and not value:
            raise ValueError(_TASK_MODULES_HINT)
        return value
