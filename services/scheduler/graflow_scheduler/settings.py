"""Typed settings of the scheduler (environment variables ``GRAFLOW_SCHEDULER_*``)."""

from __future__ import annotations

import os
import socket

from pydantic import Field, field_validator, model_validator

from graflow_runtime.addresses import DEFAULT_RESULT_STORE_ADDRESS, DEFAULT_SCHEDULER_ADDRESS
from graflow_runtime.settings import BusSettings, ServiceAddress, settings_config


def default_consumer_name() -> str:
    """Consumer name in the ``scheduler`` group of the outcome stream: unique per process."""
    return f"{socket.gethostname()}-{os.getpid()}"


class SchedulerSettings(BusSettings):
    model_config = settings_config("GRAFLOW_SCHEDULER_")

    # gRPC listen address ("host:port"; port 0 picks a free port).
    listen_address: str = DEFAULT_SCHEDULER_ADDRESS
    result_store_address: ServiceAddress = DEFAULT_RESULT_STORE_ADDRESS
    # Consumer name in the outcome stream's group. Set it to a stable name (e.g. the pod name) so
    # that a restarted replica drains what it held; otherwise other replicas reclaim it when idle.
    consumer_name: str = Field(default_factory=default_consumer_name, min_length=1)
    # Outcomes read (and applied in one pipeline, what they release dispatched in one round trip)
    # per batch.
    outcome_batch: int = Field(default=256, ge=1, le=10_000)
    outcome_block_ms: int = Field(default=2000, ge=1)
    # An outcome redelivered more often than this (a scheduler crashed on it each time) goes to
    # the dead letters instead of being applied again.
    outcome_max_deliveries: int = Field(default=10, ge=1)
    # How often the outcome consumer logs its totals (applied, stale, duplicate, lost, ...) when
    # they changed.
    stats_log_interval_s: float = Field(default=60.0, gt=0)
    # Limits of a submitted workflow.
    max_nodes: int = Field(default=100_000, ge=1)
    max_args_bytes: int = Field(default=1024 * 1024, ge=2)
    # Seconds ended runs are kept (their keys expire afterwards; a run's dispatch record expires
    # this long after its last dispatch).
    retention_s: int = Field(default=7 * 24 * 3600, ge=1)
    # Recovery sweep period: READY nodes of active runs are dispatched again (deduplicated).
    sweep_interval_s: float = Field(default=10.0, gt=0)
    # Live runs' results, channels and checkpoints get their retention restarted this often (by the
    # recovery sweep); keep it well below GRAFLOW_RESULT_STORE_RETENTION_S.
    results_keepalive_s: float = Field(default=24 * 3600.0, gt=0)
    # How often the wait timer fires due feedback deadlines and resumes parents of ended child runs.
    wait_timer_interval_s: float = Field(default=0.5, gt=0)
    # Outcomes pending longer than this in another consumer (a dead replica) are claimed.
    claim_idle_ms: int = Field(default=30_000, ge=1)
    # Compiled plans kept in memory (LRU by graph hash).
    plan_cache_size: int = Field(default=1024, ge=1)
    # WatchRun: longest blocking read before re-checking the run, and the Redis connections
    # reserved for watchers (each watcher holds one while it blocks).
    watch_block_ms: int = Field(default=5000, ge=1)
    watch_max_connections: int = Field(default=1024, ge=1)
    # ---- Feedback notifications (graflow_scheduler.notify; docs/operations.md) ----
    # Each new feedback request is POSTed here (Slack-compatible JSON); empty: no notifications.
    feedback_webhook_url: str = ""
    # HMAC-SHA256 key of the X-Graflow-Signature header; empty: unsigned (warned at start-up).
    feedback_webhook_secret: str = Field(default="", repr=False)
    # Seconds one POST may take (connect, send, answer) before it counts as a failed attempt.
    feedback_webhook_timeout_s: float = Field(default=5.0, gt=0)
    # Attempts of one notification (the first included) before it is given up (logged, counted).
    feedback_webhook_max_attempts: int = Field(default=8, ge=1)
    # Delay after the first failed attempt, doubling (with jitter) up to the max.
    feedback_webhook_backoff_initial_s: float = Field(default=1.0, gt=0)
    feedback_webhook_backoff_max_s: float = Field(default=60.0, gt=0)
    # Notifications in flight at once in this process: a slow receiver holds no more than this.
    feedback_webhook_concurrency: int = Field(default=16, ge=1)
    # A notification held this long by another replica without news (it died) is taken over.
    feedback_webhook_claim_idle_ms: int = Field(default=180_000, ge=1)
    # Public base URL of the console: the payload links to <console_url>/runs/<run>/feedback/<id>.
    console_url: str = "http://127.0.0.1:8480"

    @field_validator("feedback_webhook_url", "console_url")
    @classmethod
    def _check_http_url(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _check_webhook_claim(self) -> SchedulerSettings:
        # A notification being retried is touched before each attempt: the longest quiet spell is
        # one backoff delay plus one POST, which must stay below the claim threshold or another
        # replica takes over a live notification (and it is sent twice at once).
        quiet_ms = 1000 * (self.feedback_webhook_backoff_max_s + self.feedback_webhook_timeout_s)
        if self.feedback_webhook_claim_idle_ms <= quiet_ms:
            raise ValueError(
                f"GRAFLOW_SCHEDULER_FEEDBACK_WEBHOOK_CLAIM_IDLE_MS ({self.feedback_webhook_claim_idle_ms}) "
                "must exceed GRAFLOW_SCHEDULER_FEEDBACK_WEBHOOK_BACKOFF_MAX_S + "
                f"GRAFLOW_SCHEDULER_FEEDBACK_WEBHOOK_TIMEOUT_S ({quiet_ms:.0f} ms), or another replica "
                "takes over notifications that are being retried"
            )
        return self
