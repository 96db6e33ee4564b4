"""Assembly of the result-store: ``create_app(settings, redis)`` wires it, ``start``/``stop`` run it
(as a process: ``graflow_runtime.service``, which checks Redis first).

Start-up: gRPC server -> health SERVING. Shutdown: NOT_SERVING, stop the server within the grace
period (in-flight calls finish), close Redis.
"""

from __future__ import annotations

import redis.asyncio as aioredis
import structlog

from graflow_api.v1 import result_store_pb2, result_store_pb2_grpc
from graflow_runtime.audit import AuditLog
from graflow_runtime.grpc_server import ServerHandle, ServicerBinding, create_api_server
from graflow_runtime.version import __version__

from graflow_result_store.servicer import ResultStoreServicer
from graflow_result_store.settings import ResultStoreSettings
from graflow_result_store.store import ResultStore

SERVICE_NAME = result_store_pb2.DESCRIPTOR.services_by_name["ResultStore"].full_name

log = structlog.get_logger(__name__)


class ResultStoreApp:
    """The result-store wired on its settings and a Redis client, which it owns (closed by ``stop``)."""

    def __init__(self, settings: ResultStoreSettings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.store = ResultStore(redis, retention_s=settings.retention_s)
        servicer = ResultStoreServicer(self.store, max_value_bytes=settings.max_value_bytes)
        self.handle: ServerHandle = create_api_server(
            settings.listen_address,
            [
                ServicerBinding(
                    result_store_pb2_grpc.add_ResultStoreServicer_to_server, servicer, SERVICE_NAME
                )
            ],
            name="result-store",
            settings=settings,
            audit=AuditLog(redis, service="result-store", maxlen=settings.audit_maxlen),
        )

    @property
    def port(self) -> int:
        return self.handle.port

    async def start(self) -> None:
        await self.handle.start()
        log.info(
            "result-store listening",
            version=__version__,
            port=self.port,
            address=self.settings.listen_address,
        )

    async def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING, stop accepting calls, let in-flight calls finish within the grace period
        (``shutdown_grace_s`` unless given), close Redis."""
        grace_s = self.settings.shutdown_grace_s if grace_s is None else grace_s
        log.info("result-store stopping", grace_s=grace_s)
        await self.handle.stop(grace_s)
        await self.redis.aclose()
        log.info("result-store stopped")


def create_app(settings: ResultStoreSettings, redis: aioredis.Redis) -> ResultStoreApp:
    """Wire (not start) the result-store; ``settings.listen_address`` with port 0 binds any free port."""
    return ResultStoreApp(settings, redis)
