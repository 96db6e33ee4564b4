"""Coordinator settings, read from ``GRAFLOW_COORDINATOR_*`` environment variables."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from graflow_runtime.addresses import DEFAULT_COORDINATOR_ADDRESS
from graflow_runtime.names import queue_name_problem
from graflow_runtime.settings import BusSettings, settings_config, split_list


class CoordinatorSettings(BusSettings):
    model_config = settings_config("GRAFLOW_COORDINATOR_")

    listen_address: str = DEFAULT_COORDINATOR_ADDRESS
    # Workers heartbeat at least this often (returned by RegisterWorker). A worker's death is seen
    # at once on its heartbeat stream (the connection breaks), so heartbeats and the lease only
    # catch what keeps the connection open (a paused process, a partition, a stalled event loop);
    # each one costs ~1.4-1.8 ms of CPU over worker, coordinator and Redis (docs/performance.md,
    # "Liveness"), so 20 s keeps liveness under 1% of a core for 100 workers.
    heartbeat_interval_ms: int = Field(default=20_000, gt=0)
    # A worker silent for longer than this is declared dead and its in-flight work is reclaimed.
    lease_timeout_ms: int = Field(default=40_000, gt=0)
    # How often the liveness loop looks for workers whose lease expired.
    liveness_check_ms: int = Field(default=1_000, gt=0)
    # After this process starts, workers get this long to reach it before silence counts against
    # them: while the coordinator was down nobody could heartbeat, and a worker's breaker and
    # reconnect backoff (about 2 s each) delay its first heartbeat after the restart.
    startup_grace_ms: int = Field(default=5000, ge=0)
    # Longest wait of the retry timer. It wakes at the next due time, and at once when any process
    # schedules a delivery due earlier (gf:retry:wake): this cap only bounds how late a delivery
    # can be when such a wake-up was lost (a Redis failover).
    retry_timer_max_sleep_ms: int = Field(default=1000, gt=0)
    # How long the per-run dispatch record (highest attempt dispatched per node) is kept, for
    # the Dispatch RPC (the scheduler's own dispatches use its GRAFLOW_SCHEDULER_RETENTION_S).
    dispatch_record_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)
    # A node whose worker died this many times (the envelope's lost_attempts + XPENDING
    # times-delivered) is a poison message: its delivery goes to the dead letters and the node
    # fails with PoisonMessage instead of being reported lost (and redelivered) once more.
    max_deliveries: int = Field(default=5, ge=1)
    # Queues whose consumer group is created at start-up (JSON list or comma-separated).
    queues: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["default"])
    # Approximate cap of the dead-letter stream (XADD MAXLEN ~).
    dead_letter_maxlen: int = Field(default=100_000, gt=0)
    # How often queue streams are trimmed below their oldest pending entry (MINID).
    queue_trim_interval_ms: int = Field(default=5_000, gt=0)

    @field_validator("queues", mode="before")
    @classmethod
    def _parse_queues(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("queues")
    @classmethod
    def _check_queues(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one queue is required")
        for queue in value:
            problem = queue_name_problem(queue)
            if problem:
                raise ValueError(problem)
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _check_lease(self) -> CoordinatorSettings:
        if self.heartbeat_interval_ms >= self.lease_timeout_ms:
            raise ValueError(
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be below "
                f"lease_timeout_ms ({self.lease_timeout_ms}), or live workers are declared dead"
            )
        return self
