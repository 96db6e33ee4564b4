"""How the SDK reaches a service (private): one lazily opened channel per service (TLS when a CA is
given), the deadline and the bearer token of every call, and the translation of gRPC errors into
the SDK's errors.

:class:`~graflow.Client` (scheduler, result-store) and :class:`~graflow.operators.Operators`
(coordinator) each hold an :class:`Endpoint` per service they talk to. The SDK has no circuit
breaker: its calls are a person's or a script's, which see the error at once
(:class:`~graflow.errors.ServiceUnavailableError` names the address); the services' own calls go
through ``graflow_runtime.grpc_client.Downstream`` and its breaker.

Traces (docs/operations.md, "Traces"): when the application has set an OpenTelemetry tracer
provider (the SDK's ``TracerProvider``) before a service's first call, that channel gets the
OpenTelemetry client interceptor: each call is a client span, and its context travels to the
service, so a run submitted in a span is part of the caller's trace. With the OpenTelemetry API
alone (no provider set) nothing is intercepted and the calls cost what they did.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import grpc.experimental
from opentelemetry import trace

from graflow.errors import ServiceCallError, ServiceUnavailableError
from graflow_api.v1 import coordinator_pb2_grpc, result_store_pb2_grpc, scheduler_pb2_grpc
from graflow_runtime.addresses import (
    DEFAULT_COORDINATOR_ADDRESS,
    DEFAULT_RESULT_STORE_ADDRESS,
    DEFAULT_SCHEDULER_ADDRESS,
)
from graflow_runtime.grpc_options import CLIENT_CHANNEL_OPTIONS, client_channel_args
from graflow_runtime.tls import TlsFiles

# Server-streaming calls (WatchRun) are read on the calling thread instead of a helper thread per
# call: a third less client CPU and ~0.1 ms less per watch (the SDK only iterates and cancels them).
_SDK_CHANNEL_OPTIONS = [
    *CLIENT_CHANNEL_OPTIONS,
    (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
]
# Each service's default address and stub.
_SERVICES: dict[str, tuple[str, Callable[[grpc.Channel], Any]]] = {
    "scheduler": (DEFAULT_SCHEDULER_ADDRESS, scheduler_pb2_grpc.SchedulerStub),
    "result-store": (DEFAULT_RESULT_STORE_ADDRESS, result_store_pb2_grpc.ResultStoreStub),
    "coordinator": (DEFAULT_COORDINATOR_ADDRESS, coordinator_pb2_grpc.CoordinatorStub),
}

ErrorMap = Mapping[grpc.StatusCode, Callable[[str], Exception]]


def _file(value: str | None, parameter: str, variable: str) -> tuple[str, str]:
    """A TLS file and how to name it in an error: the parameter, else the variable that gave it,
    else both (it is unset: either sets it)."""
    if value is not None:
        return value, parameter
    if os.environ.get(variable):
        return os.environ[variable], variable
    return "", f"{parameter} (or {variable})"


def client_credentials(
    ca_file: str | None, cert_file: str | None, key_file: str | None
) -> grpc.ChannelCredentials | None:
    """TLS credentials of the SDK's channels, read now (None: plaintext). Each file left None comes
    from ``GRAFLOW_CLIENT_TLS_<CA|CERT|KEY>_FILE``. With a CA the servers must show a certificate it
    signed; a certificate and key, when given, are the client certificate (mTLS). Bad files raise
    :class:`graflow_runtime.tls.TlsFileError` naming the parameter or variable."""
    chosen = [
        _file(value, parameter, f"GRAFLOW_CLIENT_TLS_{kind}_FILE")
        for value, parameter, kind in (
            (ca_file, "tls_ca_file", "CA"),
            (cert_file, "tls_cert_file", "CERT"),
            (key_file, "tls_key_file", "KEY"),
        )
    ]
    (ca, ca_name), (cert, cert_name), (key, key_name) = chosen
    files = TlsFiles(ca, cert, key, ca_name=ca_name, cert_name=cert_name, key_name=key_name)
    return files.channel_credentials()


def tracing_configured() -> bool:
    """Whether the application set a tracer provider (else the API's default, which makes no span)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider)


class Endpoint:
    """One service: a lazily opened channel, the deadline, the token and error translation.

    ``address`` None: ``GRAFLOW_CLIENT_<SERVICE>_ADDRESS``, else the service's default address (one
    ``host:port``, replicas as ``host:port,host:port``, or ``dns:///name:port``: the channel
    balances over them and retries idempotent calls, :mod:`graflow_runtime.grpc_options`; a bad
    address raises :class:`graflow_runtime.addresses.AddressError` here);
    ``auth_token`` None: ``GRAFLOW_CLIENT_AUTH_TOKEN`` (sent as ``authorization: Bearer <token>`` when
    not empty); ``credentials``: TLS (:func:`client_credentials`), None for plaintext."""

    def __init__(
        self,
        service: str,
        address: str | None,
        *,
        auth_token: str | None,
        timeout: float,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        default, self._stub_class = _SERVICES[service]
        env = f"GRAFLOW_CLIENT_{service.upper().replace('-', '_')}_ADDRESS"
        token = auth_token if auth_token is not None else os.environ.get("GRAFLOW_CLIENT_AUTH_TOKEN", "")
        self.service = service
        self.address = address or os.environ.get(env) or default
        # Checked (and a list's names resolved) now: a bad address fails the construction.
        self._target, self._options = client_channel_args(self.address, _SDK_CHANNEL_OPTIONS)
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.credentials = credentials
        self._channel: grpc.Channel | None = None
        self._stub: Any = None

    @property
    def stub(self) -> Any:
        if self._stub is None:
            if self.credentials is not None:
                self._channel = grpc.secure_channel(self._target, self.credentials, options=self._options)
            else:
                self._channel = grpc.insecure_channel(self._target, options=self._options)
            channel = self._channel
            if tracing_configured():
                # Imported only then: the instrumentation costs the SDK's import ~60 ms.
                from opentelemetry.instrumentation.grpc import client_interceptor
                from opentelemetry.instrumentation.grpc.grpcext import intercept_channel

                channel = intercept_channel(channel, client_interceptor())
            self._stub = self._stub_class(channel)
        return self._stub

    def error(self, method: str, exc: grpc.RpcError, errors: ErrorMap | None = None) -> Exception:
        code, details = exc.code(), exc.details() or ""
        if errors and code in errors:
            return errors[code](details)
        if code == grpc.StatusCode.UNAVAILABLE:
            return ServiceUnavailableError(self.service, self.address, details)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return ServiceUnavailableError(
                self.service, self.address, f"no answer to {method} within {self.timeout}s"
            )
        return ServiceCallError(self.service, self.address, method, code, details)

    def call(self, method: str, request: Any, errors: ErrorMap | None = None, *, wait_s: float = 0.0) -> Any:
        """``wait_s``: how long the call may wait by design (WaitRun), added to the deadline."""
        try:
            return getattr(self.stub, method)(
                request, timeout=self.timeout + wait_s, metadata=self.metadata
            )
        except grpc.RpcError as exc:
            raise self.error(method, exc, errors) from None

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = self._stub = None
