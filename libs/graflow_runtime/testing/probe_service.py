"""``python -m graflow_runtime.testing.probe_service``: the smallest service on
:func:`graflow_runtime.service.service_main`, for its tests. Its parts are a gRPC server with
health only; ``GRAFLOW_PROBE_*`` settings make it misbehave at will."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
import structlog

from graflow_runtime.errors import ConfigurationError
from graflow_runtime.grpc_server import create_server
from graflow_runtime.service import Service, service_main
from graflow_runtime.settings import ServiceSettings, settings_config

log = structlog.get_logger(__name__)


class ProbeSettings(ServiceSettings):
    model_config = settings_config("GRAFLOW_PROBE_")

    listen_address: str = "127.0.0.1:0"
    # build() raises ConfigurationError (as the worker does for a task module that does not load).
    misconfigured: bool = False
    # start() takes this long before the server starts.
    start_delay_s: float = 0.0
    # The parts ask to stop by themselves this long after they started (0: never).
    stop_after_s: float = 0.0
    # stop() never returns (only a second signal ends the process).
    stop_hangs: bool = False


class ProbeParts:
    def __init__(self, settings: ProbeSettings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.server = create_server(settings.listen_address, [], name="probe")
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        log.info("probe starting")
        await asyncio.sleep(self.settings.start_delay_s)
        await self.server.start()
        log.info("probe listening", port=self.server.port)
        if self.settings.stop_after_s:
            asyncio.get_running_loop().call_later(self.settings.stop_after_s, self._stopping.set)

    async def stop_requested(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        log.info("probe stopping")
        if self.settings.stop_hangs:
            await asyncio.Event().wait()
        await self.server.stop(1.0)
        await self.redis.aclose()
        log.info("probe stopped")


def build(settings: ProbeSettings, redis: aioredis.Redis) -> ProbeParts:
    if settings.misconfigured:
        raise ConfigurationError("GRAFLOW_PROBE_MISCONFIGURED is set: the probe refuses to start")
    return ProbeParts(settings, redis)


if __name__ == "__main__":
    service_main(Service("probe", ProbeSettings, build))
