"""Assembly of the result-store server, apart from process concerns (see ``__main__``)."""

from __future__ import annotations

import redis.asyncio as aioredis

from graflow_api.v1 import result_store_pb2, result_store_pb2_grpc
from graflow_runtime.grpc_server import ServerHandle, ServicerBinding, create_server

from graflow_result_store.servicer import ResultStoreServicer
from graflow_result_store.settings import ResultStoreSettings
from graflow_result_store.store import ResultStore

SERVICE_NAME = result_store_pb2.DESCRIPTOR.services_by_name["ResultStore"].full_name


class ResultStoreApp:
    """The gRPC server of the result-store, built on a given Redis client (which it does not own)."""

    def __init__(self, settings: ResultStoreSettings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.store = ResultStore(redis, retention_s=settings.retention_s)
        servicer = ResultStoreServicer(self.store, max_value_bytes=settings.max_value_bytes)
        self.handle: ServerHandle = create_server(
            settings.listen_address,
            [
                ServicerBinding(
                    result_store_pb2_grpc.add_ResultStoreServicer_to_server, servicer, SERVICE_NAME
                )
            ],
            auth_token=settings.auth_token,
        )

    @property
    def port(self) -> int:
        return self.handle.port

    async def start(self) -> None:
        await self.handle.server.start()
        await self.handle.set_serving(True)

    async def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING, stop accepting calls, let in-flight calls finish within the grace period."""
        await self.handle.stop(self.settings.shutdown_grace_s if grace_s is None else grace_s)


def create_app(settings: ResultStoreSettings, redis: aioredis.Redis) -> ResultStoreApp:
    """Build (not start) the server; ``settings.listen_address`` with port 0 binds any free port."""
    return ResultStoreApp(settings, redis)
