"""Settings of the result-store (environment prefix ``GRAFLOW_RESULT_STORE_``)."""

from __future__ import annotations

from pydantic import Field

from graflow_runtime.addresses import DEFAULT_RESULT_STORE_ADDRESS
from graflow_runtime.limits import MAX_RESULT_BYTES
from graflow_runtime.settings import ServiceSettings, settings_config

SEVEN_DAYS_S = 7 * 24 * 3600


class ResultStoreSettings(ServiceSettings):
    model_config = settings_config("GRAFLOW_RESULT_STORE_")

    # host:port the gRPC server binds (port 0 = any free port).
    listen_address: str = DEFAULT_RESULT_STORE_ADDRESS
    # Results, channels and checkpoints of a run expire this many seconds after their last write or
    # the last KeepRunsAlive of the run (the scheduler sends one for live runs, RESULTS_KEEPALIVE_S).
    retention_s: int = Field(default=SEVEN_DAYS_S, ge=1)
    # Largest accepted value (result payload or channel entry), in bytes; at most MAX_RESULT_BYTES,
    # which workers check before sending a result.
    max_value_bytes: int = Field(default=MAX_RESULT_BYTES, ge=1, le=MAX_RESULT_BYTES)
